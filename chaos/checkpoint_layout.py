"""The on-disk checkpoint layout, as the tester (faults and checkers) reads it: Megatron's names
(`iter_%07d/`, `latest_checkpointed_iteration.txt`) plus the `chaos_manifest.json` written at commit.

Kept apart from the workload's own checkpoint code on purpose: an oracle must not reuse (or import: it
pulls in torch) the code it is checking."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from chaos import safe_files

MANIFEST = "chaos_manifest.json"
TRACKER = "latest_checkpointed_iteration.txt"
ITERATION_DIR = re.compile(r"^iter_(\d+)$")
_ANY_ITERATION_DIR = re.compile(r"(?:^|[._-])iter_(\d+)$")


def iteration_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def iteration_of(path: str | Path | None) -> int | None:
    """iter_0000008 (or any path ending in it) -> 8; a temp or foreign name -> None."""
    if not path:
        return None
    match = ITERATION_DIR.match(Path(str(path)).name)
    return int(match.group(1)) if match else None


def iterations_in(relative_paths: list[str]) -> list[int]:
    """The checkpoint iterations the files at these paths belong to: under an iter_0000008 directory, committed,
    or a temporary one a save left (.tmp.iter_0000008, as a save cut short leaves it)."""
    found = set()
    for name in relative_paths:
        for part in Path(name).parts:
            match = _ANY_ITERATION_DIR.search(part)
            if match:
                found.add(int(match.group(1)))
    return sorted(found)


def read_tracker(checkpoint_dir: Path) -> int | None:
    """The iteration the tracker names, or None (no tracker, or not a number)."""
    try:
        # the job's directory, read as untrusted: no link followed, no FIFO waited on, a few bytes at most
        text = safe_files.read_text(Path(checkpoint_dir) / TRACKER, limit=4096).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with os.fdopen(safe_files.open_regular(path), "rb") as handle:  # never through a link, never a FIFO
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
