"""Checkpoint corruption: damage one file of the newest *committed* checkpoint (the one the tracker names),
the way a torn write, a bad disk or a partial copy would. A resilient trainer must notice and fall back to
an older intact checkpoint instead of loading garbage.

    faults:
      - at: {step: 7, phase: checkpoint.done}
        target: {rank: 0}
        corrupt: flip       # or truncate

The file is chosen deterministically (the largest data file; ties by name), so a run replays exactly.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos import history, safe_files
from chaos.checkpoint_layout import TRACKER, iteration_dir_name
from chaos.faults.kind import Action, FaultContext, Started

CORRUPT_MODES = ("truncate", "flip")

#: Files that describe a checkpoint rather than hold its data: damaging them tests a different thing.
_NOT_DATA = {"chaos_manifest.json"}


def _read_tracker(checkpoint_dir: Path) -> int | None:
    """The iteration the tracker names (None: none, or not a number), read as the job's untrusted output: a
    tracker linked elsewhere, a FIFO or /dev/zero under its name is refused (PermissionError), never read."""
    try:
        text = safe_files.read_bytes(Path(checkpoint_dir) / TRACKER, limit=4096, root=Path(checkpoint_dir))
    except safe_files.UnsafeFile as error:
        if error.errno == errno.ENOENT:
            return None
        raise PermissionError(f"{error}; not corrupted") from None
    text = text.decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() and text.isascii() else None


def newest_committed(checkpoint_dir: Path) -> tuple[int, Path] | None:
    iteration = _read_tracker(checkpoint_dir)
    if iteration is None:
        return None
    path = Path(checkpoint_dir) / iteration_dir_name(iteration)
    return (iteration, path) if path.is_dir() and not path.is_symlink() else None


def choose_file(checkpoint: Path) -> Path:
    files = [p for p in checkpoint.rglob("*") if p.is_file() and not p.is_symlink() and p.name not in _NOT_DATA]
    if not files:
        raise FileNotFoundError(f"checkpoint {checkpoint} holds no file to corrupt")
    return max(files, key=lambda p: (p.stat().st_size, -len(str(p)), str(p)))


def _open_for_damage(checkpoint_dir: Path, path: Path) -> int:
    """A read-write fd of `path`, reached from `checkpoint_dir` without following any link, and only if it is
    a regular file with one link. The job writes its checkpoints, and chaos (root) must damage nothing else:
    an iteration folder linked elsewhere, or a shard hard-linked to a file outside, is refused."""
    try:
        file_fd = safe_files.open_regular(path, root=checkpoint_dir, writable=True)
    except OSError as error:
        raise PermissionError(f"{error.strerror or error}; not corrupted") from None
    links = os.fstat(file_fd).st_nlink
    if links != 1:
        os.close(file_fd)
        raise PermissionError(f"{path}: has {links} hard links (another name of it may lie outside the run); "
                              "not corrupted")
    return file_fd


def corrupt_file(path: Path, mode: str, checkpoint_dir: Path | None = None) -> dict:
    """truncate: keep the first half of the file; flip: invert every bit of the byte in the middle. The file
    is reached from `checkpoint_dir` (default: its own folder) as _open_for_damage allows, or not at all."""
    if mode not in CORRUPT_MODES:
        raise ValueError(f"unknown corrupt mode {mode!r}; expected 'truncate' or 'flip'")
    path = Path(path)
    fd = _open_for_damage(Path(checkpoint_dir) if checkpoint_dir is not None else path.parent, path)
    with os.fdopen(fd, "r+b") as handle:
        size = os.fstat(fd).st_size
        if mode == "truncate":
            handle.truncate(size // 2)
            os.fsync(fd)
            return {"size_before": size, "size_after": size // 2}
        if size == 0:
            raise ValueError(f"{path} is empty: nothing to flip")
        offset = size // 2
        handle.seek(offset)
        original = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([original ^ 0xFF]))
        handle.flush()
        os.fsync(fd)
        return {"offset": offset, "byte_before": original, "byte_after": original ^ 0xFF}


def corrupt_newest(checkpoint_dir: Path, mode: str) -> dict:
    """Damages the newest committed checkpoint; returns what was done, for the `corrupted` record. Raises
    (the fault is recorded as not landed, with why) rather than damage a file reached through a link."""
    checkpoint_dir = Path(checkpoint_dir)
    iteration = _read_tracker(checkpoint_dir)
    checkpoint = checkpoint_dir / iteration_dir_name(iteration) if iteration is not None else None
    if checkpoint is not None and checkpoint.is_symlink():
        raise PermissionError(f"{checkpoint}: is a symbolic link (not followed); not corrupted")
    found = newest_committed(checkpoint_dir)
    if found is None:
        raise FileNotFoundError(f"no committed checkpoint in {checkpoint_dir} (no {TRACKER} naming an iter_ dir)")
    iteration, checkpoint = found
    path = choose_file(checkpoint)
    details = corrupt_file(path, mode, checkpoint_dir)
    return {"path": str(path), "mode": mode, "iteration": iteration, **details}


@dataclass(frozen=True)
class Corrupt(Action):
    kind = "corrupt"
    corrupt: str
    """How to damage a file of the newest committed checkpoint: one of CORRUPT_MODES."""

    @classmethod
    def from_yaml(cls, read: Any, value: Any, where: str) -> "Corrupt":
        return cls(read.choice(value, where, CORRUPT_MODES))

    def to_yaml(self) -> Any:
        return self.corrupt

    def describe(self) -> str:
        return f"corrupt:{self.corrupt}"

    def start(self, context: FaultContext) -> Started:
        if context.checkpoint_dir is None:
            raise ValueError("a corrupt fault needs the workload's checkpoint directory")
        return Started(None, event=(history.CORRUPTED, corrupt_newest(context.checkpoint_dir, self.corrupt)))
