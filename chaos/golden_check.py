"""`chaos golden check`: does a golden hold on this machine? Records the scenario's uninterrupted run here (one
run, as `chaos golden record --repeats 1` does) and compares it with the golden bitwise: every logged value at
every step, every batch's data hash, the final state hash where the trainer reports one, and every entry of
every checkpoint the golden fingerprinted. Prints both environments, so the answer says which CPUs, torch and
Python it spans. A CPU golden is portable exactly where this says BITWISE EQUAL.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from chaos import golden as golden_module
from chaos.checkers.base import values_equal
from chaos.errors import InputError
from chaos.golden_runs import REPO_ROOT, record_golden
from chaos.scenario import Scenario

ENVIRONMENT_KEYS = ("cpu_model", "gpu", "torch", "python", "megatron-core", "cpu_numerics")


@dataclass
class GoldenCheck:
    golden_path: Path
    work_dir: Path
    committed: golden_module.Golden
    here: golden_module.Golden
    equal_steps: dict[str, tuple[int, int]] = field(default_factory=dict)
    """metric -> (steps equal, steps compared)."""
    compared: list[str] = field(default_factory=list)
    """What else was compared (data hashes, the final state hash, checkpoints), one line each."""
    differences: list[str] = field(default_factory=list)

    @property
    def bitwise(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        lines = [f"golden: {self.golden_path}"]
        theirs, ours = self.committed.meta.environment if self.committed.meta else {}, self.here.meta.environment
        for key in ENVIRONMENT_KEYS:
            if theirs.get(key) is not None or ours.get(key) is not None:
                lines.append(f"  {key:14} golden: {theirs.get(key)!s:44} here: {ours.get(key)}")
        for metric, (equal, compared) in self.equal_steps.items():
            lines.append(f"  {metric:14} {equal}/{compared} steps bitwise equal")
        lines += [f"  {line}" for line in self.compared]
        lines += [f"  difference: {d}" for d in self.differences[:10]]
        lines.append(f"recorded here: {self.work_dir}")
        lines.append("BITWISE EQUAL" if self.bitwise else f"DIFFERENT: {self.differences[0]}")
        return "\n".join(lines)


def committed_golden(scenario: Scenario, directory: Path = REPO_ROOT / "goldens") -> Path:
    """The golden in `directory` recorded for this workload, whatever machine recorded it."""
    fingerprint = golden_module.workload_fingerprint(scenario.workload)
    for path in sorted(Path(directory).glob("*.json")):
        meta = golden_module.meta_path(path)
        if not path.name.endswith(".meta.json") and meta.is_file() \
                and golden_module.read_meta(meta).workload_fingerprint == fingerprint:
            return path
    raise InputError(str(scenario.source), "", f"no golden in {directory} was recorded for this workload; "
                                               "name one with --golden")


def check_golden(scenario: Scenario, golden_path: Path | None = None, work_dir: Path | None = None,
                 say: Callable[[str], None] | None = None) -> GoldenCheck:
    path = Path(golden_path) if golden_path else committed_golden(scenario)
    committed = golden_module.read_golden(path)
    work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="chaos-golden-check-"))
    here = record_golden(scenario, work_dir / "here.json", work_dir / "run", repeats=1, say=say)
    result = GoldenCheck(path, work_dir, committed, here)
    for metric in sorted(set(committed.metrics) | set(here.metrics)):
        theirs, ours = committed.metrics.get(metric, {}), here.metrics.get(metric, {})
        steps = sorted(set(theirs) | set(ours))
        equal = [s for s in steps if s in theirs and s in ours and values_equal(theirs[s], ours[s])]
        result.equal_steps[metric] = (len(equal), len(steps))
        first = next((s for s in steps if s not in equal), None)
        if first is not None:
            result.differences.append(f"{metric} at step {first}: golden {theirs.get(first)!r}, here {ours.get(first)!r}")
    differing = sorted(s for s in set(committed.data_hashes) | set(here.data_hashes)
                       if committed.data_hashes.get(s) != here.data_hashes.get(s))
    if committed.data_hashes:
        result.compared.append(f"data hashes    {len(committed.data_hashes)} steps compared")
        if differing:
            result.differences.append(f"the data hash of step {differing[0]} differs")
    golden_hash = committed.meta.final_state_hash if committed.meta else None
    if golden_hash:
        result.compared.append("final state    the trainer's state hash compared")
        if here.meta.final_state_hash != golden_hash:
            result.differences.append(f"final state hash: golden {golden_hash}, here {here.meta.final_state_hash}")
    if committed.checkpoints:
        result.compared.append(f"checkpoints    iterations {sorted(committed.checkpoints)} compared entry by entry")
        result.differences += _checkpoint_differences(committed, here)
    return result


def _checkpoint_differences(committed: golden_module.Golden, here: golden_module.Golden) -> list[str]:
    from chaos.state.compare import compare_state
    from chaos.state.fingerprint import Entry

    out = []
    for iteration, theirs in sorted(committed.checkpoints.items()):
        ours = here.checkpoints.get(iteration)
        if ours is None:
            out.append(f"iteration {iteration}: no checkpoint recorded here")
            continue
        result = compare_state(iteration, {k: Entry.from_dict(v) for k, v in theirs.entries.items()}, {},
                               {k: Entry.from_dict(v) for k, v in ours.entries.items()})
        found = result.differences + result.notes
        if found:
            out.append(f"iteration {iteration}: {found[0].sentence()} ({len(found)} checkpoint entries differ)")
    return out
