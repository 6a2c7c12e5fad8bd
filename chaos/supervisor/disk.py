"""A full or read-only run directory must end the run with a clear error and still leave its report.

The supervisor keeps a small reserve file in the run directory from the start. When a write of its own
fails with ENOSPC/EDQUOT/EROFS, or a rank dies while the filesystem has less free space than the reserve,
the run stops; the reserve is deleted so that the last history records and the report fit."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from chaos.errors import InfrastructureError

RESERVE_NAME = ".chaos-reserve"
RESERVE_BYTES = 1 << 20
"""Enough for the closing history records and report.json/summary/junit/html of a typical run."""
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class DiskReserve:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / RESERVE_NAME
        self.held = False

    def take(self) -> None:
        """Best effort: on a filesystem already too full for it, the run will stop at its first failed write."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, RESERVE_BYTES)  # real blocks, not a sparse promise
                except OSError as error:
                    if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.write(fd, b"\0" * RESERVE_BYTES)
            finally:
                os.close(fd)
            self.held = True
        except OSError:
            self.release()

    def release(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass
        self.held = False

    def low(self) -> int | None:
        """Free bytes of the run directory's filesystem when below the reserve's size, else None."""
        try:
            stats = os.statvfs(self.path.parent)
        except OSError:
            return None
        free = stats.f_bavail * stats.f_frsize
        return free if free < RESERVE_BYTES else None


def disk_error(error: OSError, what: str) -> InfrastructureError:
    reason = {errno.ENOSPC: "its filesystem is full", errno.EDQUOT: "the disk quota is exhausted",
              errno.EROFS: "its filesystem is read-only"}.get(error.errno, os.strerror(error.errno or 0))
    return InfrastructureError(f"the run directory cannot be written ({reason}: {error.strerror}) while "
                               f"writing {what}; the run was stopped")
