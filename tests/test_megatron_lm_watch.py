"""chaos.blackbox's checkpoint watcher on real directory writes: a Megatron-LM save (written in place) and a
chaos save (temp directory renamed at commit), in inotify and in polling mode, plus the inotify binding.

Polling mode reports a file at the second poll that finds it unchanged, so the polling runs poll twice
after each step; inotify runs poll once (close(2) has queued the event before it returns)."""

from __future__ import annotations

import errno
import os
import selectors
import struct
import threading
import time
from pathlib import Path

import pytest

from chaos.blackbox import inotify
from chaos.blackbox.checkpoint_watch import CheckpointWatcher

MODES = ["inotify", "polling"]
TRACKER = "latest_checkpointed_iteration.txt"


def make_watcher(save_dir: Path, mode: str) -> CheckpointWatcher:
    watcher = CheckpointWatcher(save_dir, use_inotify=mode == "inotify")
    assert watcher.mode == mode, watcher.fallback_reason
    return watcher


def step(watcher: CheckpointWatcher) -> list[tuple]:
    """What one trainer step looks like to a caller: the events, as comparable tuples."""
    events = watcher.poll()
    if watcher.mode == "polling":
        events += watcher.poll()
    return [summary(event) for event in events]


def summary(event) -> tuple:
    name = Path(event.path).name
    if event.phase == "checkpoint.begin":
        return (event.phase, event.iteration, name)
    if event.phase == "checkpoint.shard":
        return (event.phase, event.iteration, event.index, name)
    if event.phase == "checkpoint.tracker":
        return (event.phase, event.iteration, event.tracker)
    return (event.phase, event.iteration, name)


def write(path: Path, size: int = 4096) -> None:
    with open(path, "wb") as file:
        file.write(b"\x01" * size)


@pytest.fixture
def watcher_factory():
    watchers = []

    def factory(save_dir: Path, mode: str) -> CheckpointWatcher:
        watchers.append(make_watcher(save_dir, mode))
        return watchers[-1]

    yield factory
    for watcher in watchers:
        watcher.close()


# ---- the two save styles --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_megatron_style_save(tmp_path, mode, watcher_factory):
    save = tmp_path / "ckpt"
    save.mkdir()
    watcher = watcher_factory(save, mode)
    directory = save / "iter_0000004"
    seen = []
    directory.mkdir()
    seen += step(watcher)
    for name in ("__0_0.distcp", "__1_0.distcp", "common.pt", "metadata.json", ".metadata"):
        write(directory / name)
        seen += step(watcher)
    with open(save / TRACKER, "w") as file:  # Megatron-LM rewrites the tracker in place
        file.write("4")
    seen += step(watcher)
    assert seen == [
        ("checkpoint.begin", 4, "iter_0000004"),
        ("checkpoint.shard", 4, 1, "__0_0.distcp"),
        ("checkpoint.shard", 4, 2, "__1_0.distcp"),
        ("checkpoint.metadata", 4, ".metadata"),
        ("checkpoint.tracker", 4, "4"),
    ]
    assert watcher.tracker_content() == "4"
    assert sorted(watcher.files_present()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "common.pt",
                                               "metadata.json"]
    assert watcher.files_present(4)["__0_0.distcp"] == 4096
    assert step(watcher) == []


@pytest.mark.parametrize("mode", MODES)
def test_chaos_style_save_renamed_at_commit(tmp_path, mode, watcher_factory):
    save = tmp_path / "ckpt"
    save.mkdir()
    watcher = watcher_factory(save, mode)
    temp, final = save / ".tmp.iter_0000004", save / "iter_0000004"
    seen = []
    temp.mkdir()
    seen += step(watcher)
    for name in ("__0_0.distcp", "__1_0.distcp"):
        write(temp / name)
        seen += step(watcher)
    write(temp / ".metadata.tmp")  # DCP writes .metadata.tmp and renames it
    os.rename(temp / ".metadata.tmp", temp / ".metadata")
    seen += step(watcher)
    write(temp / "chaos_manifest.json")
    seen += step(watcher)
    os.rename(temp, final)
    seen += step(watcher)
    (save / (TRACKER + ".tmp")).write_text("4")
    os.rename(save / (TRACKER + ".tmp"), save / TRACKER)
    seen += step(watcher)
    assert seen == [
        ("checkpoint.begin", 4, ".tmp.iter_0000004"),
        ("checkpoint.shard", 4, 1, "__0_0.distcp"),
        ("checkpoint.shard", 4, 2, "__1_0.distcp"),
        ("checkpoint.metadata", 4, ".metadata"),
        ("checkpoint.tracker", 4, "4"),
    ]
    # still followed under its new name: a late file there continues the count, with the new path
    write(final / "__2_0.distcp")
    late = watcher.poll() + watcher.poll() if mode == "polling" else watcher.poll()
    assert [(e.phase, e.index, e.path) for e in late] == [("checkpoint.shard", 3, str(final / "__2_0.distcp"))]
    assert "chaos_manifest.json" in watcher.files_present(4)


def test_inotify_chaos_save_read_in_one_batch(tmp_path, watcher_factory):
    """Events are read after the fact: the shards' IN_CLOSE_WRITE are processed after the directory was
    renamed. The watcher finds the directory again by inode and reports the files at their new path."""
    save = tmp_path / "ckpt"
    save.mkdir()
    watcher = watcher_factory(save, "inotify")
    temp, final = save / ".tmp.iter_0000008", save / "iter_0000008"
    temp.mkdir()
    assert step(watcher) == [("checkpoint.begin", 8, ".tmp.iter_0000008")]
    for name in ("__0_0.distcp", "__1_0.distcp", ".metadata"):
        write(temp / name)
    os.rename(temp, final)
    (save / "tracker.tmp").write_text("8")
    os.rename(save / "tracker.tmp", save / TRACKER)
    events = watcher.poll()
    assert [summary(e) for e in events] == [
        ("checkpoint.shard", 8, 1, "__0_0.distcp"),
        ("checkpoint.shard", 8, 2, "__1_0.distcp"),
        ("checkpoint.metadata", 8, ".metadata"),
        ("checkpoint.tracker", 8, "8"),
    ]
    assert all(e.path.startswith(str(final)) for e in events[:3])
    assert [e.mono for e in events] == sorted(e.mono for e in events)


# ---- where the directory comes from --------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_save_dir_created_after_the_watcher_starts(tmp_path, mode, watcher_factory):
    save = tmp_path / "run" / "checkpoints" / "gpt"  # two missing levels: the nearest ancestor is watched
    watcher = watcher_factory(save, mode)
    assert step(watcher) == [] and not (tmp_path / "run").exists()  # creates nothing
    save.mkdir(parents=True)
    assert step(watcher) == []
    (save / "iter_0000002").mkdir()
    assert step(watcher) == [("checkpoint.begin", 2, "iter_0000002")]
    write(save / "iter_0000002" / "__0_0.distcp")
    assert step(watcher) == [("checkpoint.shard", 2, 1, "__0_0.distcp")]


@pytest.mark.parametrize("mode", MODES)
def test_torch_format_subdirectories(tmp_path, mode, watcher_factory):
    save = tmp_path / "ckpt"
    save.mkdir()
    watcher = watcher_factory(save, mode)
    (save / "iter_0000010" / "mp_rank_00").mkdir(parents=True)  # Megatron's makedirs, both at once
    assert step(watcher) == [("checkpoint.begin", 10, "iter_0000010")]
    write(save / "iter_0000010" / "mp_rank_00" / "model_optim_rng.pt")
    assert step(watcher) == [("checkpoint.shard", 10, 1, "model_optim_rng.pt")]
    (save / "iter_0000010" / "mp_rank_01").mkdir()  # a sub-directory made after the watch was added
    write(save / "iter_0000010" / "mp_rank_01" / "model_optim_rng.pt")
    events = watcher.poll() + (watcher.poll() if mode == "polling" else [])
    assert [(e.phase, e.index) for e in events] == [("checkpoint.shard", 2)]
    assert events[0].path == str(save / "iter_0000010" / "mp_rank_01" / "model_optim_rng.pt")
    assert watcher.files_present(10) == {"mp_rank_00/model_optim_rng.pt": 4096,
                                         "mp_rank_01/model_optim_rng.pt": 4096}


def test_files_written_before_the_watch_was_added_are_counted(tmp_path, watcher_factory):
    """The directory's IN_CREATE is read (and its watch added) only at poll(): everything written into it
    before that is invisible to inotify and must come from the listing done right after the watch."""
    save = tmp_path / "ckpt"
    save.mkdir()
    watcher = watcher_factory(save, "inotify")
    directory = save / "iter_0000004"
    directory.mkdir()
    write(directory / "__0_0.distcp")
    write(directory / "__1_0.distcp")
    (directory / "__2_0.distcp").touch()  # still empty: waits for its close
    write(directory / "common.pt")
    write(directory / ".metadata")
    events = [summary(e) for e in watcher.poll()]
    assert events[0] == ("checkpoint.begin", 4, "iter_0000004")
    # a listing cannot know the close order: mtime order (equal on a coarse clock), .metadata last
    assert [e[:3] for e in events[1:3]] == [("checkpoint.shard", 4, 1), ("checkpoint.shard", 4, 2)]
    assert sorted(e[3] for e in events[1:3]) == ["__0_0.distcp", "__1_0.distcp"]
    assert events[3:] == [("checkpoint.metadata", 4, ".metadata")]
    write(directory / "__2_0.distcp")
    write(directory / "__0_0.distcp")  # rewritten: already counted, not reported again
    assert step(watcher) == [("checkpoint.shard", 4, 3, "__2_0.distcp")]


@pytest.mark.parametrize("mode", MODES)
def test_what_exists_at_start_is_the_baseline(tmp_path, mode, watcher_factory):
    save = tmp_path / "ckpt"
    (save / "iter_0000002").mkdir(parents=True)
    write(save / "iter_0000002" / "__0_0.distcp")
    (save / TRACKER).write_text("2")
    watcher = watcher_factory(save, mode)
    assert step(watcher) == []
    assert watcher.files_present() == {"__0_0.distcp": 4096} and watcher.tracker_content() == "2"
    write(save / "iter_0000002" / "__1_0.distcp")  # a save resumed in it continues the count
    assert step(watcher) == [("checkpoint.shard", 2, 2, "__1_0.distcp")]


@pytest.mark.parametrize("mode", MODES)
def test_never_fires_outside_iteration_directories(tmp_path, mode, watcher_factory):
    save = tmp_path / "ckpt"
    save.mkdir()
    watcher = watcher_factory(save, mode)
    for name in ("logs", "tensorboard", "iteration_stats"):
        (save / name / "nested").mkdir(parents=True)
        write(save / name / "events.bin")
        write(save / name / "nested" / "__0_0.distcp")
    write(save / "progress.txt")
    write(save / "__0_0.distcp")
    assert step(watcher) == [] and step(watcher) == []
    assert watcher.files_present() == {} and watcher.files_present(3) == {}
    assert watcher.tracker_content() is None


# ---- the selector, the overflow, the fallback --------------------------------------------------------
def test_selector_on_fileno_wakes_when_a_file_is_closed(tmp_path, watcher_factory):
    save = tmp_path / "ckpt"
    (save / "iter_0000006").mkdir(parents=True)
    watcher = watcher_factory(save, "inotify")
    with selectors.DefaultSelector() as selector:
        selector.register(watcher.fileno(), selectors.EVENT_READ)
        assert selector.select(timeout=0.05) == []
        file = open(save / "iter_0000006" / "__0_0.distcp", "wb")
        file.write(b"x" * 100)
        file.flush()
        assert watcher.poll() == []  # its IN_CREATE woke the selector, but a created file is no shard
        assert selector.select(timeout=0.05) == []  # written but still open: no close yet
        writer = threading.Timer(0.05, file.close)
        writer.start()
        start = time.monotonic()
        ready = selector.select(timeout=5.0)
        writer.join()
        assert ready and ready[0][1] & selectors.EVENT_READ and time.monotonic() - start < 5.0
        assert [summary(e) for e in watcher.poll()] == [("checkpoint.shard", 6, 1, "__0_0.distcp")]
        assert selector.select(timeout=0.05) == []  # drained


def test_queue_overflow_is_answered_by_a_rescan(tmp_path, watcher_factory):
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events={limit}: too many closes to overflow the queue")
    save = tmp_path / "ckpt"
    directory = save / "iter_0000001"
    directory.mkdir(parents=True)
    watcher = watcher_factory(save, "inotify")
    for number in range(3):
        write(directory / f"__{number}_0.distcp")
    # fill the queue with closes of files the watcher ignores (two, alternating: the kernel merges an event
    # identical to the one queued last), so the next shards' events are lost
    noise = [os.open(save / name, os.O_WRONLY | os.O_CREAT) for name in ("progress.txt", "other.txt")]
    for fd in noise:
        os.close(fd)
    for number in range(limit + 10):
        os.close(os.open(save / ("progress.txt", "other.txt")[number % 2], os.O_WRONLY))
    for number in range(3, 5):
        write(directory / f"__{number}_0.distcp")
    (save / TRACKER).write_text("1")
    events = watcher.poll()
    assert watcher.overflows == 1
    assert [summary(e) for e in events] == [("checkpoint.shard", 1, n + 1, f"__{n}_0.distcp") for n in range(5)] \
        + [("checkpoint.tracker", 1, "1")]
    assert step(watcher) == []


def test_a_refused_watch_degrades_to_polling(tmp_path, watcher_factory, monkeypatch):
    """max_user_watches spent (ENOSPC) cannot be arranged for a test: the refusal is simulated, the rest
    is real. The watcher must keep reporting, by polling, without repeating what it already reported."""
    real_add_watch = inotify.Inotify.add_watch

    def add_watch(self, path, mask):
        if "iter_" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_add_watch(self, path, mask)

    monkeypatch.setattr(inotify.Inotify, "add_watch", add_watch)
    save = tmp_path / "ckpt"
    save.mkdir()
    watcher = watcher_factory(save, "inotify")
    fd = watcher.fileno()
    (save / "iter_0000003").mkdir()
    assert [summary(e) for e in watcher.poll()] == [("checkpoint.begin", 3, "iter_0000003")]
    assert watcher.mode == "polling" and watcher.fileno() is None
    assert "inotify_add_watch" in watcher.fallback_reason and "No space left" in watcher.fallback_reason
    os.fstat(fd)  # kept open until close(): a selector holding the number never sees it reused
    write(save / "iter_0000003" / "__0_0.distcp")
    assert step(watcher) == [("checkpoint.shard", 3, 1, "__0_0.distcp")]


def test_polling_fallback_says_why(tmp_path, watcher_factory):
    watcher = watcher_factory(tmp_path, "polling")
    assert watcher.fileno() is None and watcher.fallback_reason == "use_inotify=False"
    (tmp_path / TRACKER).write_text("release")
    assert step(watcher) == [("checkpoint.tracker", None, "release")]


# ---- the binding itself --------------------------------------------------------------------------
def test_parse_events_reads_padded_records():
    records = struct.pack("iIII", 3, inotify.IN_CLOSE_WRITE, 0, 16) + b"__0_0.distcp\0\0\0\0"
    records += struct.pack("iIII", 1, inotify.IN_DELETE_SELF, 0, 0)
    records += struct.pack("iIII", 4, inotify.IN_MOVED_TO | inotify.IN_ISDIR, 77, 16) + b"iter_0000004\0\0\0\0"
    assert inotify.parse_events(records) == [
        inotify.InotifyEvent(3, inotify.IN_CLOSE_WRITE, 0, "__0_0.distcp"),
        inotify.InotifyEvent(1, inotify.IN_DELETE_SELF, 0, ""),
        inotify.InotifyEvent(4, inotify.IN_MOVED_TO | inotify.IN_ISDIR, 77, "iter_0000004"),
    ]


def test_inotify_binding(tmp_path):
    with inotify.Inotify() as notifier:
        assert notifier.read_events() == []
        with pytest.raises(OSError) as missing:
            notifier.add_watch(tmp_path / "missing", inotify.IN_CREATE)
        assert missing.value.errno == errno.ENOENT
        wd = notifier.add_watch(tmp_path, inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_ONLYDIR)
        assert notifier.add_watch(tmp_path, inotify.IN_CLOSE_WRITE) == wd  # one watch per inode
        write(tmp_path / "a")
        os.rename(tmp_path / "a", tmp_path / "b")
        events = notifier.read_events()
        assert [(e.wd, e.mask, e.name) for e in events] == [(wd, inotify.IN_CLOSE_WRITE, "a")]
        notifier.remove_watch(wd)
        notifier.remove_watch(wd)  # already gone: ignored
        assert [e.mask for e in notifier.read_events()] == [inotify.IN_IGNORED]
    with pytest.raises(ValueError):
        notifier.fileno()
