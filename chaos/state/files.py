"""Files of a checkpoint directory, opened as untrusted input: no symbolic link is followed (a job could
point a shard at /etc/shadow, a FIFO that never answers or /dev/zero), only regular files are read, and
every read stays inside the file (a range beyond its end is damage, reported, never read past).
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path, PurePosixPath

BLOCK_BYTES = 16 << 20
"""Largest read at once: a tensor is streamed in blocks of this size, never held whole."""


class CheckpointDamage(Exception):
    """The checkpoint's bytes do not say what they should (missing file, truncated range, bad format).
    A finding about the checkpoint, reported with this message as its evidence."""


def open_inside(root: Path, relative: str) -> int:
    """An fd of the regular file `relative` under `root`, every path component opened without following links.
    Raises CheckpointDamage when it escapes root, is missing, is a link, or is not a regular file."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise CheckpointDamage(f"{relative!r} is not a path inside the checkpoint directory")
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | nofollow)
    except OSError as error:
        raise CheckpointDamage(f"cannot open the checkpoint directory {root}: {error.strerror}") from None
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fd)
            except OSError as error:
                raise CheckpointDamage(f"{relative}: directory {part!r}: {_why(error)}") from None
            os.close(fd)
            fd = child
        try:
            # O_NONBLOCK: a FIFO planted under a shard's name must not block the open; it is refused below.
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | nofollow, dir_fd=fd)
        except OSError as error:
            raise CheckpointDamage(f"{relative}: {_why(error)}") from None
    finally:
        os.close(fd)
    mode = os.fstat(file_fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(file_fd)
        raise CheckpointDamage(f"{relative} is not a regular file")
    os.set_blocking(file_fd, True)
    return file_fd


def _why(error: OSError) -> str:
    import errno

    if error.errno == errno.ELOOP:
        return "is a symbolic link (not followed)"
    if error.errno == errno.ENOENT:
        return "is missing"
    if error.errno == errno.ENOTDIR:
        return "is not a directory"
    return error.strerror or str(error)


class _Bounded:
    """Reads that never leave the file: what CheckpointFile and MemoryFile share."""

    relative: str
    size: int

    def check_range(self, offset: int, length: int, what: str = "") -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CheckpointDamage(f"{self.relative}: {what or 'a record'} lies at bytes [{offset}, {offset + length}) "
                                   f"but the file has {self.size} bytes (truncated?)")

    def read(self, offset: int, length: int, what: str = "") -> bytes:
        raise NotImplementedError

    def blocks(self, offset: int, length: int, what: str = "", block: int = BLOCK_BYTES):
        """The bytes [offset, offset + length) in blocks of at most `block` bytes."""
        self.check_range(offset, length, what)  # a truncated file is found before streaming starts
        done = 0
        while done < length:
            size = min(block, length - done)
            yield self.read(offset + done, size, what)
            done += size


class CheckpointFile(_Bounded):
    """One open file of a checkpoint: bounded reads by absolute offset."""

    def __init__(self, root: Path, relative: str) -> None:
        self.relative = relative
        self.fd = open_inside(root, relative)
        self.size = os.fstat(self.fd).st_size

    def read(self, offset: int, length: int, what: str = "") -> bytes:
        self.check_range(offset, length, what)
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise CheckpointDamage(f"{self.relative}: short read at byte {offset} ({len(data)} of {length})")
        return data

    def view(self, offset: int, length: int, what: str = "") -> "FileSlice":
        self.check_range(offset, length, what)
        return FileSlice(self, offset, length)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "CheckpointFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FileSlice(io.RawIOBase):
    """A read-only, seekable window [start, start + length) of a CheckpointFile, as a file object: what
    zipfile needs to read a torch.save archive stored inside a DCP shard file."""

    def __init__(self, file: CheckpointFile, start: int, length: int) -> None:
        super().__init__()
        self.file, self.start, self.length, self.position = file, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        size = max(0, min(len(buffer), self.length - self.position))
        if size == 0:
            return 0
        data = self.file.read(self.start + self.position, size)
        buffer[:size] = data
        self.position += size
        return size


class MemoryFile(_Bounded):
    """Bytes already in memory (a torch.save archive nested inside a pickle) with CheckpointFile's reads."""

    def __init__(self, data: bytes, relative: str) -> None:
        self.data, self.relative, self.size = data, relative, len(data)

    def read(self, offset: int, length: int, what: str = "") -> bytes:
        self.check_range(offset, length, what)
        return self.data[offset:offset + length]

    def view(self, offset: int, length: int, what: str = "") -> io.BytesIO:
        return io.BytesIO(self.read(offset, length, what))

    def close(self) -> None:
        pass
