"""Shrinking a failing soak cycle to a minimal reproducer, the way hypothesis does: try simpler schedules
(fewer faults, earlier steps, simpler signals, one rank instead of many), keep each that still fails the
same way, stop when nothing simpler fails or the budget of real runs is spent; then re-run the result
once to tell a real failure from a flaky one.

Pure logic: `shrink` takes the predicate `still_fails(plan)` (in a soak, a real run), so the search is
tested with fake predicates in milliseconds. Schedules are tuples of chaos.plan.PlannedFault.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from chaos.plan import PlannedFault, Target
from chaos.scenario import RandomFaults, Scenario, ScriptedFault, TargetSpec

Plan = tuple[PlannedFault, ...]

DEFAULT_SHRINK_BUDGET = 4
"""Candidate runs per failure; each is a real run (tens of seconds on CPU), so the search stays short."""


@dataclass(frozen=True)
class ShrinkAttempt:
    description: str
    plan: Plan
    still_fails: bool
    detail: str = ""


@dataclass
class ShrinkOutcome:
    original: Plan
    minimal: Plan
    attempts: list[ShrinkAttempt] = field(default_factory=list)
    budget: int = DEFAULT_SHRINK_BUDGET

    @property
    def runs_used(self) -> int:
        return len(self.attempts)

    @property
    def shrunk(self) -> bool:
        return plan_key(self.minimal) != plan_key(self.original)

    def to_dict(self) -> dict[str, Any]:
        return {"original": [f.to_dict() for f in self.original], "minimal": [f.to_dict() for f in self.minimal],
                "budget": self.budget, "runs_used": self.runs_used,
                "attempts": [{"description": a.description, "still_fails": a.still_fails, "detail": a.detail}
                             for a in self.attempts]}


def plan_key(plan: Sequence[PlannedFault]) -> tuple:
    """Identity of a schedule for "tried already" (fault ids and origins do not matter)."""
    return tuple((f.trigger, f.target, f.action) for f in plan)


def shrink(original: Sequence[PlannedFault], scenario: Scenario,
           still_fails: Callable[[Plan, str], tuple[bool, str] | None],
           budget: int = DEFAULT_SHRINK_BUDGET) -> ShrinkOutcome:
    """Greedy search: take the first candidate (simplest kinds first) that still fails, start again from it.

    `still_fails(plan, description)` returns (fails the same way?, a note for the log), or None for a
    schedule it cannot run (the scenario rules reject it: that costs no budget). It is called for at most
    `budget` runnable schedules, never twice for one schedule."""
    current = renumber(tuple(original))
    outcome = ShrinkOutcome(original=tuple(original), minimal=current, budget=budget)
    tried = {plan_key(current)}
    improved = True
    while improved and outcome.runs_used < budget:
        improved = False
        for description, candidate in candidates(current, scenario):
            key = plan_key(candidate)
            if key in tried:
                continue
            if outcome.runs_used >= budget:
                break
            tried.add(key)
            answer = still_fails(candidate, description)
            if answer is None:
                continue
            fails, detail = answer
            outcome.attempts.append(ShrinkAttempt(description, candidate, fails, detail))
            if fails:
                current = outcome.minimal = candidate
                improved = True
                break
    return outcome


# ---- candidate schedules, simplest kinds first -------------------------------------------------------------
def candidates(plan: Plan, scenario: Scenario) -> Iterator[tuple[str, Plan]]:
    faults = list(plan)
    if len(faults) > 1:
        yield f"only {faults[0].id}", renumber(faults[:1])
        for i in reversed(range(len(faults))):
            yield f"without {faults[i].id}", renumber(faults[:i] + faults[i + 1:])
    if len(faults) > 1 and any(f.action.kind == "signal" and f.action.signal != "SIGKILL" for f in faults):
        yield "every signal SIGKILL", tuple(_with_signal(f, "SIGKILL") for f in faults)
    for i, fault in enumerate(faults):
        earlier = _earlier(fault, faults[i - 1] if i else None, scenario)
        if earlier is not None:
            yield f"{fault.id} earlier ({_where(earlier)} instead of {_where(fault)})", _replace_at(faults, i, earlier)
    for i, fault in enumerate(faults):
        simpler = _simpler_signal(fault)
        if simpler is not None:
            yield f"{fault.id} {simpler.action.signal} instead of {fault.action.signal}", _replace_at(faults, i, simpler)
    for i, fault in enumerate(faults):
        if len(fault.target.ranks) > 1:
            rank = fault.target.ranks[0]
            single = dataclasses.replace(fault, target=Target(kind="rank", ranks=(rank,)))
            yield f"{fault.id} on rank {rank} only", _replace_at(faults, i, single)


def renumber(faults: Sequence[PlannedFault]) -> Plan:
    """Ids f1.. in order, and the attempts compressed to 1, 2, ..: with a fault removed, the next one must
    land in the attempt the removed one used to end."""
    attempts = sorted({f.trigger.attempt for f in faults})
    mapping = {attempt: n for n, attempt in enumerate(attempts, start=1)}
    return tuple(dataclasses.replace(f, id=f"f{n}", trigger=dataclasses.replace(f.trigger, attempt=mapping[f.trigger.attempt]))
                 for n, f in enumerate(faults, start=1))


def _replace_at(faults: list[PlannedFault], i: int, fault: PlannedFault) -> Plan:
    return tuple(faults[:i] + [fault] + faults[i + 1:])


def _with_signal(fault: PlannedFault, signal: str) -> PlannedFault:
    if fault.action.kind != "signal":
        return fault
    return dataclasses.replace(fault, action=dataclasses.replace(fault.action, signal=signal))


def _simpler_signal(fault: PlannedFault) -> PlannedFault | None:
    """SIGKILL is the simplest signal: no handler, no graceful path, no hang detection."""
    if fault.action.kind != "signal" or fault.action.signal == "SIGKILL":
        return None
    return _with_signal(fault, "SIGKILL")


def _earlier(fault: PlannedFault, previous: PlannedFault | None, scenario: Scenario) -> PlannedFault | None:
    """The same fault at the earliest step its phase is reached (after the previous fault's step, which the
    restarted attempt passes again); a wall-clock fault at half its time."""
    trigger = fault.trigger
    if trigger.phase is None:
        if trigger.after_s is None or trigger.after_s < 0.5:
            return None
        return dataclasses.replace(fault, trigger=dataclasses.replace(trigger, after_s=round(trigger.after_s / 2, 3)))
    if trigger.step is None or trigger.phase == "checkpoint.load":
        return None
    low = 1
    if previous is not None and previous.trigger.attempt < trigger.attempt and previous.trigger.step is not None:
        low = previous.trigger.step + 1
    points = RandomFaults(phases=(trigger.phase,), steps=(low, trigger.step)).candidate_points(scenario.workload)
    reachable = [step for step in points if step < trigger.step]
    if not reachable:
        return None
    return dataclasses.replace(fault, trigger=dataclasses.replace(trigger, step=min(reachable)))


def _where(fault: PlannedFault) -> str:
    trigger = fault.trigger
    if trigger.phase is None:
        return f"{trigger.after_s}s"
    return f"step {trigger.step} {trigger.phase}"


# ---- the reproducer -----------------------------------------------------------------------------------------
def scripted(fault: PlannedFault) -> ScriptedFault:
    """A planned fault written back as an explicit scenario fault (chaos.schedule plans it to itself)."""
    target = fault.target
    if target.kind == "node":
        spec = TargetSpec(kind="node", node=target.node)
    elif target.kind == "all":
        spec = TargetSpec(kind="all")
    elif len(target.ranks) == 1:
        spec = TargetSpec(kind="rank", ranks=target.ranks)
    else:
        spec = TargetSpec(kind="ranks", ranks=tuple(sorted(target.ranks)))
    return ScriptedFault(trigger=fault.trigger, target=spec, action=fault.action)


def scenario_with_plan(scenario: Scenario, plan: Sequence[PlannedFault], name: str | None = None,
                       description: str | None = None, golden_path: Path | None = None) -> Scenario:
    """The scenario with its faults replaced by the plan, written out explicitly (no random entries)."""
    golden = scenario.golden
    if golden_path is not None and Path(golden_path).is_file():
        golden = dataclasses.replace(scenario.golden, path=Path(golden_path).resolve())
    return dataclasses.replace(scenario, name=name or scenario.name,
                               description=scenario.description if description is None else description,
                               faults=tuple(scripted(f) for f in plan), golden=golden)


def describe_plan(plan: Sequence[PlannedFault]) -> str:
    parts = []
    for fault in plan:
        action = fault.action.describe()
        where = _where(fault) + (f" #{fault.trigger.index}" if fault.trigger.index is not None else "")
        parts.append(f"{action} ranks {list(fault.target.ranks)} at {where} (attempt {fault.trigger.attempt})")
    return "; ".join(parts) or "no faults"
