"""older_checkpoint_loaded: the process is told that the newest committed checkpoint is an older one.

Reads of `$CHAOS_PLANT_CHECKPOINTS/$CHAOS_PLANT_TRACKER` through `builtins.open` / `io.open` (pathlib's
read_text goes through io.open) are answered with the tracker's own text, the iteration N it names
replaced by the newest older `iter_<digits>` directory of the checkpoint directory (formatting kept).
Every read-mode open of the tracker is answered so from the first one until the process's first forward
after a load (training resumed), as long as the file still names N: Megatron-LM reads the tracker two to
four times in one load (`read_metadata` in the rank0 pass of `_load_base_checkpoint` for the checkpoint
args, again in the real pass, once more in `get_load_checkpoint_path_by_args` for fsdp_dtensor), and a
lie told only once would load the args of one checkpoint and the weights of another. Opens after that
(a save's retention logic reading the tracker) and every write are untouched.

Stands for a resume that silently picks an older checkpoint than the newest committed one: a tracker
written before the checkpoint it names was committed (and the fallback that follows), a stale tracker
cached on one node, a "latest" symlink not updated.
"""

from __future__ import annotations

import builtins
import io
import os
import re
import threading

from chaos_plants import events, log

_ITERATION_DIR = re.compile(r"^iter_(\d+)$")

_lock = threading.RLock()
_original_open = None
_tracker_path: str | None = None
_tracker_name: str | None = None
_told: tuple | None = None  # (real bytes, lied bytes, N, M) once decided to lie
_decided = False
_window_closed = False


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _NamedBytesIO(io.BytesIO):
    def __init__(self, data: bytes, name: str, mode: str) -> None:
        super().__init__(data)
        self.name = name
        self.mode = mode


def _is_read_mode(mode) -> bool:
    return isinstance(mode, str) and not any(flag in mode for flag in "wax+")


def _is_tracker(file) -> bool:
    if _tracker_path is None or isinstance(file, int):
        return False
    try:
        path = os.fspath(file)
    except TypeError:
        return False
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if os.path.basename(path) != _tracker_name:
        return False
    return os.path.realpath(path) == _tracker_path


def _older_iterations(newest: int) -> list[int]:
    directory = os.path.dirname(_tracker_path)
    found = []
    for entry in os.listdir(directory):
        match = _ITERATION_DIR.match(entry)
        if match and int(match.group(1)) < newest and os.path.isdir(os.path.join(directory, entry)):
            found.append(int(match.group(1)))
    return sorted(found)


def _decide(real: bytes) -> None:
    """At the first read: what to tell from now on (or nothing, with an idle record)."""
    global _told, _decided
    _decided = True
    text = real.decode("utf-8", "replace")
    match = re.search(r"\d+", text)
    if match is None or text.strip() != match.group(0):
        log.record("idle", why=f"the tracker names no iteration ({text.strip()[:40]!r})")
        return
    newest = int(match.group(0))
    older = _older_iterations(newest)
    if not older:
        log.record("idle", why=f"the tracker named the oldest committed checkpoint ({newest})")
        return
    told = older[-1]
    digits = str(told).zfill(len(match.group(0))) if match.group(0).startswith("0") else str(told)
    lied = (text[:match.start()] + digits + text[match.end():]).encode("utf-8")
    _told = (real, lied, newest, told)
    log.record("acted", what=f"the tracker names iteration {newest}; this rank was told {told}")


def _answer(file, mode, buffering, encoding, errors, newline):
    """The file object to hand back for a read of the tracker, or None to let the real open happen."""
    global _window_closed
    if events.resumed:
        _window_closed = True
        _restore_open()
        return None
    try:
        with _original_open(file, "rb") as handle:
            real = handle.read(1 << 16)
    except OSError:
        return None  # missing (a first attempt), unreadable: the real open says so itself
    with _lock:
        if not _decided:
            _decide(real)
        told = _told
    if told is None or real != told[0]:
        return None  # no older checkpoint, or the tracker was rewritten since: the truth from now on
    log.load("tracker", _tracker_path)
    raw = _NamedBytesIO(told[1], os.fspath(file) if not isinstance(file, bytes) else os.fsdecode(file), mode)
    if "b" in mode:
        return raw
    return io.TextIOWrapper(raw, encoding=encoding, errors=errors, newline=newline)


def _open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
    if not _window_closed and _is_read_mode(mode) and _is_tracker(file):
        try:
            answer = _answer(file, mode, buffering, encoding, errors, newline)
        except Exception as error:
            log.failed(error, where="reading the tracker")
            answer = None
        if answer is not None:
            return answer
    return _original_open(file, mode, buffering, encoding, errors, newline, closefd, opener)


def _restore_open() -> None:
    """After the window: the real open back in place (where nobody replaced ours since)."""
    for module in (builtins, io):
        if getattr(module, "open", None) is _open:
            module.open = _original_open


def _close_window() -> None:
    global _window_closed
    _window_closed = True
    _restore_open()


def install(bug: str) -> None:
    global _original_open, _tracker_path, _tracker_name
    checkpoints = os.environ.get("CHAOS_PLANT_CHECKPOINTS")
    name = os.environ.get("CHAOS_PLANT_TRACKER")
    if not checkpoints or not name:
        raise ValueError("older_checkpoint_loaded needs CHAOS_PLANT_CHECKPOINTS and CHAOS_PLANT_TRACKER")
    _tracker_name = os.path.basename(name)
    _tracker_path = os.path.realpath(os.path.join(checkpoints, name))
    _original_open = io.open
    _open.__doc__ = _original_open.__doc__
    builtins.open = _open
    io.open = _open
    events.on_first_forward(_close_window)
