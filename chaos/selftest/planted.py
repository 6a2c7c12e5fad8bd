"""A bug planted in an unmodified job from outside: the workload wrapped so that every rank starts with the
injection layer on its import path (chaos/selftest/hook, a `sitecustomize` enabled by CHAOS_PLANT), and what
the ranks said they did, read back from the run directory.

Nothing is written into the user's checkout: the layer is chaos's own directory put first on PYTHONPATH, its
switches are environment variables, and its records go to `<run>/plant/` (one file per process).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import safe_files
from chaos.workloads.base import LaunchSpec, Workload

HOOK_DIR = Path(__file__).resolve().parent / "hook"
"""Put first on the ranks' PYTHONPATH: its sitecustomize.py installs the bug named by CHAOS_PLANT."""

ENV_BUG = "CHAOS_PLANT"
ENV_LOG = "CHAOS_PLANT_LOG"
ENV_CHECKPOINTS = "CHAOS_PLANT_CHECKPOINTS"
ENV_TRACKER = "CHAOS_PLANT_TRACKER"
PLANT_DIR = "plant"
"""Inside the bug's run directory: plant-<pid>.jsonl per process that loaded the layer."""
RECORD_LIMIT = 4 * safe_files.MiB


class PlantedWorkload:
    """The scenario's workload with one bug planted: identical in everything (facts, layout, fingerprint, the
    scenario it writes) except the environment its ranks start with."""

    def __init__(self, workload: Workload, bug: str) -> None:
        self._workload = workload
        self.bug = bug

    def __getattr__(self, name: str) -> Any:
        return getattr(self._workload, name)

    def launch(self, run_dir: Path) -> LaunchSpec:
        spec = self._workload.launch(run_dir)
        log_dir = Path(run_dir).resolve() / PLANT_DIR
        safe_files.make_dirs(log_dir, root=Path(run_dir).resolve())
        base_path = spec.env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        env = {**spec.env,
               "PYTHONPATH": os.pathsep.join(p for p in (str(HOOK_DIR), base_path) if p),
               ENV_BUG: self.bug,
               ENV_LOG: str(log_dir),
               ENV_CHECKPOINTS: str(Path(spec.checkpoint_dir).resolve()),
               ENV_TRACKER: spec.tracker_name}
        return dataclasses.replace(spec, env=env)


@dataclass
class PlantEvidence:
    """What the ranks of one bug run said the planted bug did (records of chaos_plants, by process)."""

    processes: set[int] = field(default_factory=set)
    """Pids in which the layer was installed (a rank that execs its trainer installs it twice, same pid)."""
    loads: int = 0
    acted: list[str] = field(default_factory=list)
    idle: list[str] = field(default_factory=list)
    not_applicable: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"processes": len(self.processes), "loads": self.loads, "acted": self.acted[:20],
                "idle": self.idle[:20], "not_applicable": self.not_applicable[:20], "failed": self.failed[:20],
                "unreadable": self.unreadable[:20]}


def read_evidence(run_dir: Path) -> PlantEvidence:
    """The plant records of a bug run, each line read as untrusted input (a rank wrote it): no link followed,
    bounded, malformed lines counted as unreadable, text escaped."""
    evidence = PlantEvidence()
    directory = Path(run_dir) / PLANT_DIR
    if not directory.is_dir() or directory.is_symlink():
        return evidence
    for path in sorted(directory.glob("plant-*.jsonl")):
        try:
            text = safe_files.read_text(path, limit=RECORD_LIMIT, root=directory)
        except OSError as error:
            evidence.unreadable.append(safe_files.one_line(error))
            continue
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                evidence.unreadable.append(f"{path.name}: {safe_files.one_line(line, 80)}")
                continue
            if isinstance(record, dict):
                _add(evidence, record)
    return evidence


def _add(evidence: PlantEvidence, record: dict[str, Any]) -> None:
    event = record.get("event")
    rank = record.get("rank")
    who = f"rank {rank}" if isinstance(rank, int) else f"pid {record.get('pid')}"

    def said(key: str) -> str:
        return f"{who}: {safe_files.one_line(record.get(key), 300)}"

    if event == "installed":
        evidence.processes.add(record.get("pid") if isinstance(record.get("pid"), int) else -1)
    elif event == "load":
        evidence.loads += 1
    elif event == "acted":
        evidence.acted.append(said("what"))
    elif event == "idle":
        evidence.idle.append(said("why"))
    elif event == "not_applicable":
        evidence.not_applicable.append(said("why"))
    elif event == "failed":
        evidence.failed.append(said("error"))
