"""The plant log: one JSON object a line, appended by each process to `$CHAOS_PLANT_LOG/plant-<pid>.jsonl`.

Every record carries "event", "bug", "pid", "rank" (env RANK as an int, or null) and "time". The file is
opened per process id (a forked DataLoader worker writes its own file, never its parent's descriptor),
with O_NOFOLLOW (the log directory is the tester's; a link planted in it is not followed) and O_CLOEXEC,
and each line goes out in one os.write. Nothing here ever raises: a log that cannot be written is said
once on stderr and the records are dropped.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

LOAD_RECORDS_MAX = 20
"""`load` records kept per process: a trainer that reads hundreds of shard files says so 20 times."""

_lock = threading.Lock()
_bug: str | None = None
_fd: int | None = None
_fd_pid: int | None = None
_broken_said = False
_loads_logged = 0
_loads_pid: int | None = None


def _after_fork_in_child() -> None:
    """A fork taken while another thread held the lock must not leave the child's copy locked forever."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def rank() -> int | None:
    try:
        return int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None


def configure(bug: str | None) -> None:
    global _bug
    _bug = bug


def _path() -> str:
    directory = os.environ.get("CHAOS_PLANT_LOG")
    if not directory:
        raise OSError("CHAOS_PLANT_LOG is not set")
    return os.path.join(directory, f"plant-{os.getpid()}.jsonl")


def _descriptor() -> int:
    """This process's log descriptor, opened on first use (and again in a forked child)."""
    global _fd, _fd_pid
    pid = os.getpid()
    if _fd is None or _fd_pid != pid:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        _fd = os.open(_path(), flags, 0o600)  # a parent's descriptor (after fork) is left to the parent
        _fd_pid = pid
    return _fd


def check_writable() -> None:
    """Raises OSError when this process cannot write its log (install refuses to plant a bug it cannot report)."""
    with _lock:
        _descriptor()


def _say_broken(error: BaseException) -> None:
    global _broken_said
    if _broken_said:
        return
    _broken_said = True
    try:
        sys.stderr.write(f"chaos plant {_bug!r}: failed: cannot write the plant log ({one_line(error)})\n")
        sys.stderr.flush()
    except Exception:
        pass


def record(event: str, **fields) -> bool:
    """Appends one record; True when it was written."""
    try:
        line = {"event": event, "bug": fields.pop("bug", _bug), "pid": os.getpid(), "rank": rank(), "time": time.time()}
        line.update(fields)
        data = (json.dumps(line, default=str, allow_nan=True) + "\n").encode("utf-8", "replace")
        with _lock:
            os.write(_descriptor(), data)
        return True
    except BaseException as error:  # noqa: BLE001 - logging must never take the trainer down
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        _say_broken(error)
        return False


def load(how: str, path: str) -> None:
    """A `load` record, at most LOAD_RECORDS_MAX per process."""
    global _loads_logged, _loads_pid
    if _loads_pid != os.getpid():
        _loads_pid, _loads_logged = os.getpid(), 0
    if _loads_logged >= LOAD_RECORDS_MAX:
        return
    _loads_logged += 1
    record("load", how=how, path=path)


def one_line(error: BaseException) -> str:
    """`Type: message (at file.py:12 in function)`, on one line."""
    try:
        import traceback  # only when something failed: startup stays cheap

        text = f"{type(error).__name__}: {error}"
        frames = traceback.extract_tb(error.__traceback__)
        if frames:
            last = frames[-1]
            text += f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
        return " ".join(text.split())
    except Exception:
        return type(error).__name__


def failed(error: BaseException, **fields) -> None:
    record("failed", error=one_line(error), **fields)
