"""Watching a trainer's checkpoint directory from outside: when a save begins, when each shard file has
been written, when the metadata file is written and when the tracker file is updated.

For trainers chaos cannot instrument (Megatron-LM's pretrain_gpt.py): the files are the only signal.
The phases mirror the probe's checkpoint points, so a scenario reads the same for both kinds of trainer:

    checkpoint.begin     a directory whose name holds `iter_<digits>` appeared in save_dir (created or
                         moved in: Megatron's `iter_0000010`, chaos's `.tmp.iter_0000010`); once per
                         directory inode, so the rename `.tmp.iter_N` -> `iter_N` is not a second begin
    checkpoint.shard     a data file in it (or in a sub-directory, e.g. `mp_rank_00/`) was closed after
                         writing or moved in; `index` is its 1-based rank in that directory
    checkpoint.metadata  `.metadata` (DCP's, written as `.metadata.tmp` then renamed) closed or moved in
    checkpoint.tracker   `latest_checkpointed_iteration.txt` closed after writing or moved in (Megatron
                         rewrites it in place, chaos's trainer renames a temp file over it); read at once

`common.pt`, `metadata.json`, `chaos_manifest.json` and dot-files other than `.metadata` are bookkeeping:
no event. A file is reported once: by name, and by inode across a rename (`x.tmp` -> `x`). A file still
empty when closed is not reported until it is closed (or found, see below) non-empty.

Baseline: whatever save_dir holds when the watcher starts (a previous attempt's checkpoints) gives no
events; its directories are still followed, so a file added later continues their shard count. A save_dir
that does not exist yet is waited for (the nearest existing ancestor is watched; nothing is created), and
everything in it once it appears is new.

inotify mode. Watches: save_dir (IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE), each iteration directory and
each of its sub-directories (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE). The kernel keys watches by inode,
so a renamed directory keeps its watch and its record (found again by inode under the new name).
  The race: a directory's watch can only be added after its IN_CREATE has been read, and the trainer may
have written files into it in between; inotify never reports those. So right after adding a directory's
watch it is listed once, and every regular file already there with size > 0 counts as written then (in
mtime order). The price: a file caught while still being written is reported early (at its first
non-empty size, not at its close), and its later IN_CLOSE_WRITE is not reported again.
  IN_Q_OVERFLOW (events lost): `overflows` is incremented and save_dir is rescanned with the same
size > 0 rule; what a scan can tell (new directories, files now non-empty, a changed tracker) is emitted.
  Should a watch be refused (ENOSPC: max_user_watches spent, EACCES), the watcher carries on in polling
mode (`fallback_reason` says why); the records so far are kept, so nothing is reported twice.
Latency: the kernel queues the event inside close(2)/rename(2); a selector on fileno() wakes at once,
so what is left is the poll() call itself (scripts/bench_watch.py measures it).

polling mode (use_inotify=False, or inotify unavailable; `fallback_reason` says why): one scan of save_dir
per poll(). New iteration directories -> begin at that poll; a file counts as written at the first poll
that finds it with the same non-zero size and mtime it had at the previous poll; the tracker's content or
mtime changed -> tracker. Honest latency: a begin is seen up to one poll interval late, a file between one
and two intervals after its last write (50-100 ms at the supervisor's 50 ms tick) plus the scan itself,
which grows with the number of files. A writer stalled mid-file for longer than an interval looks finished
and is reported early; a tracker caught mid-write by Megatron's in-place rewrite gives an event with
tracker '' and then another with the content; a directory deleted and recreated between two polls with
the same inode number is taken for the same directory.

Standard library only, never torch: the supervisor imports this.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos import safe_files
from chaos.blackbox.inotify import (IN_CLOSE_WRITE, IN_CREATE, IN_DELETE_SELF, IN_IGNORED, IN_ISDIR,
                                    IN_MOVE_SELF, IN_MOVED_TO, IN_ONLYDIR, IN_Q_OVERFLOW, Inotify,
                                    InotifyEvent)
from chaos.checkpoint_layout import MANIFEST, TRACKER

BEGIN = "checkpoint.begin"
SHARD = "checkpoint.shard"
METADATA = "checkpoint.metadata"
TRACKER_WRITTEN = "checkpoint.tracker"

ITERATION_IN_NAME = re.compile(r"iter_(\d+)")
METADATA_FILE = ".metadata"
BOOKKEEPING = frozenset({"common.pt", "metadata.json", MANIFEST})

_ANCESTOR_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_SAVE_DIR_MASK = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_ITERATION_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ONLYDIR
_GONE = (errno.ENOENT, errno.ENOTDIR)  # the path vanished between its event and our call: not a failure


@dataclass(frozen=True)
class CheckpointEvent:
    phase: str
    """checkpoint.begin | checkpoint.shard | checkpoint.metadata | checkpoint.tracker"""
    iteration: int | None
    """The digits of `iter_(\\d+)` in the directory's name; for the tracker, its content when all digits."""
    index: int | None
    """checkpoint.shard only: the k-th data file (1-based) written in that directory."""
    path: str
    """The directory (begin) or the file."""
    mono: float
    """time.monotonic() when the watcher saw it."""
    tracker: str | None = None
    """checkpoint.tracker: the content, stripped ('' when empty, e.g. caught mid-write; None when the file
    was gone again before it could be read)."""


@dataclass(eq=False)
class _IterationDir:
    key: tuple[int, int]                 # (st_dev, st_ino): the directory's identity across renames
    iteration: int
    path: Path                           # its current name
    order: int                           # discovery order: the newest is the one files_present() shows
    wd: int | None = None
    subdirs: dict[str, int] = field(default_factory=dict)   # relative path -> wd
    written: dict[str, int] = field(default_factory=dict)   # reported files: relative path -> inode
    inodes: set[int] = field(default_factory=set)
    shards: int = 0
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # polling: relpath -> (size, mtime_ns)


class CheckpointWatcher:
    """Follows one save_dir; poll() (from a selectors loop on fileno(), or every tick) says what is new.
    Not thread-safe: one owner polls."""

    def __init__(self, save_dir: Path, tracker_name: str = TRACKER, use_inotify: bool = True) -> None:
        self.save_dir = Path(os.path.abspath(save_dir))
        self.tracker_name = tracker_name
        self.overflows = 0
        """IN_Q_OVERFLOW seen (each answered by a rescan)."""
        self.fallback_reason: str | None = None
        """Why the watcher polls (None while it uses inotify)."""
        self._inotify: Inotify | None = None
        self._dirs: dict[tuple[int, int], _IterationDir] = {}
        self._order = 0
        self._watches: dict[int, tuple[_IterationDir, str]] = {}  # wd -> (directory, relative subdir)
        self._save_wd: int | None = None
        self._ancestor: tuple[int, Path] | None = None
        self._tracker_state: tuple[int, str] | None = None        # (mtime_ns, content) last reported
        self._pending: list[CheckpointEvent] = []
        self._degrade: str | None = None
        self._silent = True  # the baseline: what is there now is not news
        if use_inotify:
            try:
                self._inotify = Inotify()
            except OSError as exc:
                self.fallback_reason = f"inotify unavailable: {exc}"
        else:
            self.fallback_reason = "use_inotify=False"
        self.mode = "inotify" if self._inotify is not None else "polling"
        """inotify | polling (from the start, or since a watch was refused)"""
        if self.mode == "inotify":
            self._attach()
            self._degrade_if_needed()
        if self.mode == "polling" and self.save_dir.is_dir():
            self._scan_save_dir(stable=False)
        self._silent = False

    # ---- public --------------------------------------------------------------------------------
    def fileno(self) -> int | None:
        return self._inotify.fileno() if self.mode == "inotify" and self._inotify is not None else None

    def poll(self) -> list[CheckpointEvent]:
        """Everything new since the last call, in the order seen. Never blocks."""
        if self._inotify is not None:
            events = self._inotify.read_events()
            if self.mode == "inotify":
                for event in events:
                    self._handle(event)
                self._degrade_if_needed()
            # else: a degraded instance kept open only so its fd number is not reused; drained, ignored
        if self.mode == "polling":
            if self.save_dir.is_dir():
                self._scan_save_dir(stable=True)
            else:
                for record in list(self._dirs.values()):
                    self._forget(record)
                self._tracker_state = None
        events, self._pending = self._pending, []
        return events

    def files_present(self, iteration: int | None = None) -> dict[str, int]:
        """name -> size of the regular files (sub-directories' as 'sub/name') in that iteration's directory
        now; the newest iteration directory seen when None; {} when there is none."""
        records = [r for r in self._dirs.values() if iteration is None or r.iteration == iteration]
        path = max(records, key=lambda r: r.order).path if records else None
        if path is None and iteration is not None:  # not seen (yet): look for it on disk
            names = sorted(_iteration_names(self.save_dir).get(iteration, ()), key=lambda n: n.startswith("."))
            path = self.save_dir / names[0] if names else None
        if path is None:
            return {}
        return {relpath: stat.st_size for relpath, stat in _walk(path)}

    def tracker_content(self) -> str | None:
        """The tracker file's content now, stripped; None when it does not exist."""
        state = self._read_tracker()
        return state[1] if state is not None else None

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._watches.clear()

    def __enter__(self) -> CheckpointWatcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- inotify -------------------------------------------------------------------------------
    def _attach(self) -> None:
        """Watches save_dir once it exists, else its nearest existing ancestor (re-run on its events).
        Re-checks after each add_watch: the path may have grown while the watch was being added."""
        assert self._inotify is not None
        while self._save_wd is None and self._degrade is None:
            if self.save_dir.is_dir():
                try:
                    self._save_wd = self._inotify.add_watch(self.save_dir, _SAVE_DIR_MASK)
                except OSError as exc:
                    if exc.errno not in _GONE:
                        self._degrade = f"inotify_add_watch({self.save_dir}) failed: {exc}"
                    continue
                self._drop_ancestor()
                self._scan_save_dir(stable=False)
                return
            ancestor = next(p for p in self.save_dir.parents if p.is_dir())
            if self._ancestor is not None and self._ancestor[1] == ancestor:
                return
            try:
                wd = self._inotify.add_watch(ancestor, _ANCESTOR_MASK)
            except OSError as exc:
                if exc.errno not in _GONE:
                    self._degrade = f"inotify_add_watch({ancestor}) failed: {exc}"
                continue
            self._drop_ancestor()
            self._ancestor = (wd, ancestor)

    def _drop_ancestor(self) -> None:
        if self._ancestor is not None and self._inotify is not None:
            self._inotify.remove_watch(self._ancestor[0])
        self._ancestor = None

    def _handle(self, event: InotifyEvent) -> None:
        mask = event.mask
        if mask & IN_Q_OVERFLOW:
            self.overflows += 1
            if self._save_wd is not None and not self.save_dir.is_dir():
                self._save_wd = None  # its IN_IGNORED may have been among the lost events
            if self._save_wd is None:
                self._attach()
            else:
                self._scan_save_dir(stable=False)
        elif event.wd == self._save_wd:
            self._on_save_dir(event)
        elif self._ancestor is not None and event.wd == self._ancestor[0]:
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                self._drop_ancestor()
            self._attach()
        elif event.wd in self._watches:
            self._on_iteration_dir(event, *self._watches[event.wd])
        # else: a watch already dropped (its last events, IN_IGNORED): nothing to do

    def _on_save_dir(self, event: InotifyEvent) -> None:
        mask = event.mask
        if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):  # save_dir itself went away: wait again
            if self._inotify is not None and self._save_wd is not None:
                self._inotify.remove_watch(self._save_wd)
            self._save_wd = None
            self._attach()
        elif mask & IN_ISDIR:
            match = ITERATION_IN_NAME.search(event.name)
            if match and mask & (IN_CREATE | IN_MOVED_TO):
                record, unlisted = self._iteration_dir(event.name, int(match.group(1)))
                if record is not None and unlisted:
                    self._scan_tree(record, "", stable=False)
        elif event.name == self.tracker_name and mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
            state = self._read_tracker()
            if state is not None:
                self._tracker_state = state
            self._emit_tracker(state[1] if state is not None else None)

    def _on_iteration_dir(self, event: InotifyEvent, record: _IterationDir, subdir: str) -> None:
        if event.mask & IN_IGNORED:  # deleted (or unwatched): a new directory there is a new save
            self._watches.pop(event.wd, None)
            if subdir:
                record.subdirs.pop(subdir, None)
            else:
                self._forget(record)
            return
        relpath = f"{subdir}/{event.name}" if subdir else event.name
        if event.mask & IN_ISDIR:
            if event.mask & (IN_CREATE | IN_MOVED_TO):
                self._scan_tree(record, relpath, stable=False)
        elif event.mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
            # Events are read after the fact: by now the directory may have been renamed (chaos commits
            # `.tmp.iter_N` -> `iter_N` right after its last close), and its MOVED_TO may be further on
            # in this batch. Find it again by inode before giving up on the file.
            for attempt in range(2):
                try:
                    stat = os.stat(record.path / relpath, follow_symlinks=False)
                    break
                except OSError:
                    if attempt or not self._relocate(record):
                        return  # the file itself is gone or renamed: its own MOVED_TO reports it
            if stat.st_size > 0:
                self._file_written(record, relpath, stat.st_ino)

    def _relocate(self, record: _IterationDir) -> bool:
        """Finds the record's directory in save_dir by inode; True when it is there under another name."""
        for names in _iteration_names(self.save_dir).values():
            for name in names:
                try:
                    stat = os.stat(self.save_dir / name, follow_symlinks=False)
                except OSError:
                    continue
                if (stat.st_dev, stat.st_ino) == record.key and self.save_dir / name != record.path:
                    record.path = self.save_dir / name
                    return True
        return False

    def _watch(self, record: _IterationDir, subdir: str) -> None:
        if self.mode != "inotify" or self._inotify is None or self._degrade is not None:
            return
        if (record.wd if not subdir else record.subdirs.get(subdir)) is not None:
            return
        try:
            wd = self._inotify.add_watch(record.path / subdir if subdir else record.path, _ITERATION_MASK)
        except OSError as exc:
            if exc.errno not in _GONE:
                self._degrade = f"inotify_add_watch({record.path / subdir}) failed: {exc}"
            return
        if subdir:
            record.subdirs[subdir] = wd
        else:
            record.wd = wd
        self._watches[wd] = (record, subdir)

    def _degrade_if_needed(self) -> None:
        """A refused watch means files could be missed: poll from now on. The inotify fd stays open until
        close() (drained by poll()), so a selector that registered it never sees its number reused."""
        if self._degrade is None or self.mode != "inotify":
            return
        self.fallback_reason, self.mode = self._degrade, "polling"
        assert self._inotify is not None
        for wd in [*self._watches, *([self._save_wd] if self._save_wd is not None else [])]:
            self._inotify.remove_watch(wd)
        self._drop_ancestor()
        self._watches.clear()
        self._save_wd = None
        for record in self._dirs.values():
            record.wd, record.subdirs = None, {}

    # ---- scanning (both modes) -----------------------------------------------------------------
    def _iteration_dir(self, name: str, iteration: int) -> tuple[_IterationDir | None, bool]:
        """The record of save_dir/name, emitting begin when it is new, and whether it needs the listing
        that closes the race (new, or watched only now: in inotify mode its watch is added here, before
        the caller lists it, so a file is either found by the listing or reported by the watch)."""
        path = self.save_dir / name
        try:
            stat = os.stat(path, follow_symlinks=False)
        except OSError:
            return None, False
        record = self._dirs.get((stat.st_dev, stat.st_ino))
        new = record is None
        if record is None:
            self._order += 1
            record = _IterationDir((stat.st_dev, stat.st_ino), iteration, path, self._order)
            self._dirs[record.key] = record
            self._emit(BEGIN, iteration, None, str(path))
        else:
            record.path = path  # renamed: same inode, same watch, same count
            if record.iteration != iteration:  # renamed to another iteration: a save of that one
                record.iteration = iteration
                self._emit(BEGIN, iteration, None, str(path))
        watched = record.wd is not None
        self._watch(record, "")
        return record, new or (record.wd is not None and not watched)

    def _scan_save_dir(self, stable: bool) -> None:
        """New iteration directories, files written in any known one, the tracker. Records whose directory
        is no longer in save_dir are dropped (their IN_IGNORED may have been lost to an overflow)."""
        present = set()
        for iteration, names in sorted(_iteration_names(self.save_dir).items()):
            for name in sorted(names):
                record, _ = self._iteration_dir(name, iteration)
                if record is not None:
                    present.add(record.key)
        for record in list(self._dirs.values()):
            if record.key not in present:
                self._forget(record)
        for record in sorted(self._dirs.values(), key=lambda r: r.order):
            self._scan_tree(record, "", stable)
        state = self._read_tracker()
        if state != self._tracker_state:
            self._tracker_state = state
            if state is not None:
                self._emit_tracker(state[1])

    def _scan_tree(self, record: _IterationDir, subdir: str, stable: bool) -> None:
        """Counts the files under record.path/subdir that are written by now: size > 0 (inotify: they may
        predate the watch), or the same size > 0 and mtime as at the previous poll (polling). Reported in
        mtime order, the best guess at the order they were written in. Watches sub-directories on the way."""
        found = []
        self._watch(record, subdir)
        for relpath, stat in _walk(record.path / subdir if subdir else record.path, subdir,
                                   on_dir=lambda rel: self._watch(record, rel)):
            if relpath in record.written or stat.st_size == 0:
                continue
            if stable:
                now, before = (stat.st_size, stat.st_mtime_ns), record.seen.get(relpath)
                record.seen[relpath] = now
                if before != now:
                    continue
            # .metadata last among equal mtimes (coarse timestamps tie): DCP writes it after every shard
            found.append((stat.st_mtime_ns, relpath.rsplit("/", 1)[-1] == METADATA_FILE, relpath, stat.st_ino))
        for _, _, relpath, inode in sorted(found):
            self._file_written(record, relpath, inode)

    def _file_written(self, record: _IterationDir, relpath: str, inode: int) -> None:
        name = relpath.rsplit("/", 1)[-1]
        if relpath in record.written or (name != METADATA_FILE and (name in BOOKKEEPING or name.startswith("."))):
            return
        record.written[relpath] = inode
        if inode in record.inodes:  # the same file under a new name (x.tmp -> x): already reported
            return
        record.inodes.add(inode)
        record.seen.pop(relpath, None)
        if name == METADATA_FILE:
            self._emit(METADATA, record.iteration, None, str(record.path / relpath))
        else:
            record.shards += 1
            self._emit(SHARD, record.iteration, record.shards, str(record.path / relpath))

    def _forget(self, record: _IterationDir) -> None:
        self._dirs.pop(record.key, None)
        for wd in [record.wd, *record.subdirs.values()]:
            if wd is not None and self._watches.pop(wd, None) is not None and self._inotify is not None:
                self._inotify.remove_watch(wd)  # an error (already gone) is ignored
        record.wd, record.subdirs = None, {}

    # ---- tracker and events --------------------------------------------------------------------
    def _read_tracker(self) -> tuple[int, str] | None:
        try:
            fd = safe_files.open_regular(self.save_dir / self.tracker_name)  # no link, no FIFO: the job's file
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            mtime = os.fstat(fd).st_mtime_ns
            return mtime, file.read(4096).decode("utf-8", "replace").strip()

    def _emit_tracker(self, content: str | None) -> None:
        iteration = int(content) if content and content.isascii() and content.isdigit() else None
        self._emit(TRACKER_WRITTEN, iteration, None, str(self.save_dir / self.tracker_name), tracker=content)

    def _emit(self, phase: str, iteration: int | None, index: int | None, path: str,
              tracker: str | None = None) -> None:
        if not self._silent:
            self._pending.append(CheckpointEvent(phase, iteration, index, path, time.monotonic(), tracker))


def _iteration_names(save_dir: Path) -> dict[int, list[str]]:
    """iteration -> names of the directories in save_dir whose name holds `iter_<digits>`."""
    found: dict[int, list[str]] = {}
    try:
        entries = list(os.scandir(save_dir))
    except OSError:
        return found
    for entry in entries:
        match = ITERATION_IN_NAME.search(entry.name)
        try:
            if match and entry.is_dir(follow_symlinks=False):
                found.setdefault(int(match.group(1)), []).append(entry.name)
        except OSError:
            continue
    return found


def _walk(directory: Path, prefix: str = "", on_dir=None):
    """(relative path, stat) of every regular file under directory; on_dir(relative path) for each
    sub-directory before it is listed. Entries vanishing mid-walk are skipped."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        relpath = f"{prefix}/{entry.name}" if prefix else entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                if on_dir is not None:
                    on_dir(relpath)
                yield from _walk(Path(entry.path), relpath, on_dir)
            elif entry.is_file(follow_symlinks=False):
                yield relpath, entry.stat(follow_symlinks=False)
        except OSError:
            continue
