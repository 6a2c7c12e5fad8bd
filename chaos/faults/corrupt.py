"""Checkpoint corruption: damage one file of the newest *committed* checkpoint (the one the tracker names),
the way a torn write, a bad disk or a partial copy would. A resilient trainer must notice and fall back to
an older intact checkpoint instead of loading garbage.

The file is chosen deterministically (the largest data file; ties by name), so a run replays exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

from chaos.checkpoint_layout import TRACKER, iteration_dir_name, read_tracker
from chaos.plan import Action

#: Files that describe a checkpoint rather than hold its data: damaging them tests a different thing.
_NOT_DATA = {"chaos_manifest.json"}


def newest_committed(checkpoint_dir: Path) -> tuple[int, Path] | None:
    iteration = read_tracker(checkpoint_dir)
    if iteration is None:
        return None
    path = Path(checkpoint_dir) / iteration_dir_name(iteration)
    return (iteration, path) if path.is_dir() else None


def choose_file(checkpoint: Path) -> Path:
    files = [p for p in checkpoint.rglob("*") if p.is_file() and not p.is_symlink() and p.name not in _NOT_DATA]
    if not files:
        raise FileNotFoundError(f"checkpoint {checkpoint} holds no file to corrupt")
    return max(files, key=lambda p: (p.stat().st_size, -len(str(p)), str(p)))


def corrupt_file(path: Path, mode: str) -> dict:
    """truncate: keep the first half of the file; flip: invert every bit of the byte in the middle."""
    size = path.stat().st_size
    if mode == "truncate":
        with open(path, "r+b") as handle:
            handle.truncate(size // 2)
            os.fsync(handle.fileno())
        return {"size_before": size, "size_after": size // 2}
    if mode == "flip":
        if size == 0:
            raise ValueError(f"{path} is empty: nothing to flip")
        offset = size // 2
        with open(path, "r+b") as handle:
            handle.seek(offset)
            original = handle.read(1)[0]
            handle.seek(offset)
            handle.write(bytes([original ^ 0xFF]))
            handle.flush()
            os.fsync(handle.fileno())
        return {"offset": offset, "byte_before": original, "byte_after": original ^ 0xFF}
    raise ValueError(f"unknown corrupt mode {mode!r}; expected 'truncate' or 'flip'")


def corrupt_newest(checkpoint_dir: Path, mode: str) -> dict:
    """Damages the newest committed checkpoint; returns what was done, for the `corrupted` record."""
    found = newest_committed(checkpoint_dir)
    if found is None:
        raise FileNotFoundError(f"no committed checkpoint in {checkpoint_dir} (no {TRACKER} naming an iter_ dir)")
    iteration, checkpoint = found
    path = choose_file(checkpoint)
    details = corrupt_file(path, mode)
    return {"path": str(path), "mode": mode, "iteration": iteration, **details}


def execute(action: Action, context) -> dict:
    if action.corrupt is None:
        raise ValueError("a corrupt fault needs action.corrupt (truncate or flip)")
    if context.checkpoint_dir is None:
        raise ValueError("a corrupt fault needs the workload's checkpoint directory")
    return corrupt_newest(context.checkpoint_dir, action.corrupt)
