"""The GPT-3 workload's checkpoints as the tester reads them: Megatron's names (`iter_%07d/`,
`latest_checkpointed_iteration.txt`) plus the `chaos_manifest.json` (size + sha256 of every file) its
commit writes before the rename and the tracker update.

Kept apart from the workload's own checkpoint code on purpose: an oracle must not reuse (or import: that
pulls in torch) the code it is checking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from chaos import safe_files
from chaos.checkpoint_layout import MANIFEST, TRACKER, sha256_file
from chaos.state import layout as state_layout


class ManifestLayout:
    """Committed = renamed into place with a manifest whose every file is there with its size and sha256."""

    tracker_name = TRACKER

    def problems(self, directory: Path, committed: Mapping[str, Any] | None = None,
                 learned: Mapping[str, int] | None = None) -> list[str]:
        directory = Path(directory)
        if not directory.is_dir():
            return [f"{directory.name} does not exist"]
        if learned:  # the files every checkpoint of the uninterrupted run had; the manifest is checked below
            problems = state_layout.problems(directory, learned)[0]
        else:
            problems = [] if (directory / ".metadata").is_file() else [".metadata is missing"]
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            return problems + [f"no {MANIFEST} (never committed)"]
        try:
            files = json.loads(safe_files.read_text(manifest_path))["files"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return problems + [f"unreadable {MANIFEST}: {error}"]
        for name, expected in sorted(files.items()):
            path = directory / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif path.stat().st_size != expected.get("size"):
                problems.append(f"{name} has {path.stat().st_size} bytes, committed {expected.get('size')}")
            elif sha256_file(path) != expected.get("sha256"):
                problems.append(f"{name} does not match its committed sha256")
        return problems
