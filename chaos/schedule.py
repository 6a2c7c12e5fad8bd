"""The schedule: *when* faults happen. Turns a scenario's fault specifications into concrete, typed
chaos.plan.PlannedFault objects, with every random choice derived from one seed, so that any run can be
planned again (or replayed from its stored plan.json) without a cluster.

Pure functions, no I/O: the supervisor writes plan_to_json(plan) into the run directory itself.
"""

from __future__ import annotations

import json
import random
from typing import Any, Iterator, Mapping

from chaos.errors import InputError
from chaos.plan import Action, PlannedFault, Target, Trigger
from chaos.safe_files import check_identifier
from chaos.scenario.model import RandomFaults, Scenario, ScriptedFault, TargetSpec
from chaos.workloads import Workload

PLAN_FORMAT = "chaos-plan/1"

_ENTRY_STRIDE = 1_000_003
"""Each fault entry gets its own stream, Random(seed * stride + entry index): editing one random entry
must not reshuffle what another one plans."""


def plan_faults(scenario: Scenario, seed: int | None = None) -> tuple[PlannedFault, ...]:
    """Every fault of the scenario, concrete (targets resolved to ranks), ids f1, f2, ... in file order.

    `seed` overrides scenario.seed (the soak loop and `--seed` use it).
    """
    seed = scenario.seed if seed is None else seed
    planned: list[tuple[Trigger, Target, Action, str]] = []
    for index, spec in enumerate(scenario.faults):
        rng = random.Random(seed * _ENTRY_STRIDE + index)
        origin = f"random(seed={seed})"
        if isinstance(spec, ScriptedFault):
            target = _resolve_target(spec.target, scenario, rng)
            planned.append((spec.trigger, target, spec.action,
                            origin if spec.target.kind == "random" else "scenario"))
        else:
            planned.extend((trigger, target, action, origin) for trigger, target, action in _expand(spec, scenario, rng))
    return tuple(PlannedFault(id=f"f{n}", trigger=trigger, target=target, action=action, origin=origin)
                 for n, (trigger, target, action, origin) in enumerate(planned, start=1))


def _resolve_target(spec: TargetSpec, scenario: Scenario, rng: random.Random) -> Target:
    if spec.kind in ("rank", "ranks"):
        return Target(kind=spec.kind, ranks=spec.ranks)
    if spec.kind == "node":
        assert spec.node is not None
        return Target(kind="node", ranks=scenario.node_ranks(spec.node), node=spec.node)
    if spec.kind == "all":
        return Target(kind="all", ranks=tuple(range(scenario.world_size)))
    ranks = tuple(sorted(rng.sample(range(scenario.world_size), spec.count)))
    return Target(kind="rank", ranks=ranks) if len(ranks) == 1 else Target(kind="ranks", ranks=ranks)


def _expand(entry: RandomFaults, scenario: Scenario, rng: random.Random) -> Iterator[tuple[Trigger, Target, Action]]:
    """One `random:` entry -> its faults. The k-th lands in attempt `entry.attempt + k - 1`: each signal ends
    its attempt, and a resumed attempt passes again every step after its checkpoint, so strictly increasing
    steps are each reached in the attempt after the previous fault."""
    candidate_ranks = entry.ranks or tuple(range(scenario.world_size))
    if entry.is_mtbf:
        assert entry.mtbf_s is not None and entry.count is not None
        elapsed_s = 0.0
        for k in range(entry.count):
            gap_s = mtbf_gap_s(rng, entry.mtbf_s)
            elapsed_s += gap_s
            if entry.until_s is not None and elapsed_s > entry.until_s:
                return
            yield (Trigger(attempt=entry.attempt + k, after_s=gap_s),
                   Target(kind="rank", ranks=(rng.choice(candidate_ranks),)),
                   Action(kind="signal", signal=rng.choice(entry.signals)))
        return
    points = entry.candidate_points(scenario.workload)
    steps = sorted(rng.sample(sorted(points), entry.count or 1))
    for k, step in enumerate(steps):
        phase, index = draw_phase(rng, points[step], scenario.workload)
        # only rank 0 reaches the coordinator's points: a fault there on another rank could never land
        rank = 0 if phase in scenario.workload.phases.coordinator_phases else rng.choice(candidate_ranks)
        yield (Trigger(step=step, phase=phase, index=index, attempt=entry.attempt + k),
               Target(kind="rank", ranks=(rank,)),
               Action(kind="signal", signal=rng.choice(entry.signals)))


# Shared with chaos.soak.schedule. Seeded plans must not change: keep the order of the rng calls.
def mtbf_gap_s(rng: random.Random, mtbf_s: float) -> float:
    """An exponential inter-arrival time of mean mtbf_s, in milliseconds; never 0 (after_s must be > 0)."""
    return round(rng.expovariate(1.0 / mtbf_s), 3) or 0.001


def draw_phase(rng: random.Random, phases: tuple[str, ...], workload: Workload) -> tuple[str, int | None]:
    """One of `phases`, and for checkpoint.shard which shard file (1-based) the fault waits for (the first
    when the workload cannot say how many it writes)."""
    phase = rng.choice(phases)
    index = None
    if phase == "checkpoint.shard":
        limit = workload.phases.index_limit(phase)
        index = rng.randint(1, limit[0]) if limit and limit[0] else 1
    return phase, index


# ---- plan.json -----------------------------------------------------------------------------------------
def plan_to_json(plan: tuple[PlannedFault, ...] | list[PlannedFault]) -> str:
    """The plan as JSON text for `plan.json` in the run directory; plan_from_json reads it back equal."""
    return json.dumps({"format": PLAN_FORMAT, "faults": [fault.to_dict() for fault in plan]}, indent=2) + "\n"


def plan_from_json(data: str | bytes | Mapping[str, Any] | list, source: str = "plan.json") -> tuple[PlannedFault, ...]:
    """Reads a stored plan (JSON text or the parsed object) for replay; a damaged one is an InputError."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as error:
            raise InputError(source, f"line {error.lineno}", f"invalid JSON: {error.msg}") from None
        except (RecursionError, UnicodeDecodeError) as error:
            why = "nested too deeply" if isinstance(error, RecursionError) else "not UTF-8"
            raise InputError(source, "", f"invalid JSON: {why}") from None
    faults = data.get("faults") if isinstance(data, Mapping) else data
    if isinstance(data, Mapping) and data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
        raise InputError(source, "format", f"expected {PLAN_FORMAT!r}, got {data.get('format')!r}")
    if not isinstance(faults, list):
        raise InputError(source, "faults", "expected a list of planned faults")
    plan = []
    for i, item in enumerate(faults):
        # an id becomes part of file and cgroup names and a line of the summary: a newline or an escape
        # sequence in one (a plan.json prepared by someone else) must not reach them
        check_identifier(item.get("id") if isinstance(item, Mapping) else None, source, f"faults[{i}].id")
        try:
            plan.append(PlannedFault.from_dict(item))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(source, f"faults[{i}]", f"not a planned fault ({type(error).__name__}: {error})") from None
    return tuple(plan)
