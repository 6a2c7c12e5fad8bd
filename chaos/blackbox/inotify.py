"""A thin ctypes binding of Linux inotify(7): what the checkpoint watcher needs and nothing more.

Why ctypes and not a package: the supervisor must not grow dependencies, and the three libc calls are
small. The descriptor is created IN_NONBLOCK | IN_CLOEXEC: non-blocking so `read_events` can drain it
from a `selectors` loop without ever stalling the supervisor, close-on-exec so ranks the supervisor
launches do not inherit it.

The kernel hands out `struct inotify_event` records back to back:

    int32 wd; uint32 mask; uint32 cookie; uint32 len; char name[len]   (name NUL-padded, len may be 0)

`read_events` reads until EAGAIN and parses every record. A read buffer must hold at least one whole
record (16 + NAME_MAX + 1 bytes) or read(2) fails with EINVAL; 64 KiB holds hundreds.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# ---- masks (linux/inotify.h) ------------------------------------------------------------------
IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_CLOSE_NOWRITE = 0x00000010
IN_OPEN = 0x00000020
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
# events the kernel sends whatever the mask
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000        # the queue overflowed (wd == -1): events were lost
IN_IGNORED = 0x00008000           # the watch is gone (removed, or its inode deleted / unmounted)
# add_watch flags
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_MASK_ADD = 0x20000000
IN_ISDIR = 0x40000000             # in an event: the subject is a directory
IN_ONESHOT = 0x80000000

IN_CLOSE = IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
IN_MOVE = IN_MOVED_FROM | IN_MOVED_TO

# inotify_init1 flags are the O_ ones (IN_NONBLOCK == O_NONBLOCK, IN_CLOEXEC == O_CLOEXEC on Linux)
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")
_READ_SIZE = 65536


@dataclass(frozen=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str
    """The entry's name inside the watched directory ('' for events about the watched inode itself).
    Undecodable bytes survive as surrogates (os.fsdecode), so os.fsencode gives the real name back."""


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.inotify_rm_watch.restype = ctypes.c_int
    except AttributeError as exc:  # not Linux, or a libc without inotify
        raise OSError(errno.ENOSYS, f"inotify is not available in this libc: {exc}") from None
    return libc


def parse_events(buffer: bytes) -> list[InotifyEvent]:
    """Splits what read(2) returned into events. The kernel never splits a record between reads."""
    events = []
    offset = 0
    while offset + _HEADER.size <= len(buffer):
        wd, mask, cookie, length = _HEADER.unpack_from(buffer, offset)
        offset += _HEADER.size
        raw = buffer[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(InotifyEvent(wd, mask, cookie, os.fsdecode(raw)))
    return events


class Inotify:
    """One inotify instance. Not thread-safe: one owner reads and changes watches."""

    def __init__(self) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self._fd: int | None = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("inotify instance is closed")
        return self._fd

    def add_watch(self, path: str | Path, mask: int) -> int:
        """Watches `path` (or changes the mask of the existing watch on its inode: the kernel keys watches
        by inode, so the same wd comes back for a directory under a new name)."""
        wd = self._libc.inotify_add_watch(self.fileno(), os.fsencode(path), mask)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
        return wd

    def remove_watch(self, wd: int) -> None:
        """Errors are ignored: the watch may already be gone (its inode was deleted, IN_IGNORED queued)."""
        if self._fd is not None:
            self._libc.inotify_rm_watch(self._fd, wd)

    def read_events(self) -> list[InotifyEvent]:
        """Everything pending, without blocking; [] when nothing is."""
        fd = self.fileno()
        events: list[InotifyEvent] = []
        while True:
            try:
                buffer = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return events
            except InterruptedError:
                continue
            if not buffer:
                return events
            events.extend(parse_events(buffer))

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
