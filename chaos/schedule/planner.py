"""The planner: a scenario's fault specifications (chaos.schedule.specs) -> concrete, typed chaos.plan.PlannedFault
objects, every random choice derived from one seed, so that any run can be planned again (or replayed from its
stored plan.json) without a cluster.

The scenario comes in as a PlannableScenario (what chaos.scenario.Scenario offers): chaos.schedule never imports
chaos.scenario, which imports the spec types from here.
"""

from __future__ import annotations

import random
from typing import Iterator, Protocol

from chaos.faults import Action
from chaos.faults.signals import Signal
from chaos.plan import PlannedFault, Target, Trigger
from chaos.schedule.points import draw_phase, mtbf_gap_s
from chaos.schedule.specs import FaultSpec, RandomFaults, ScriptedFault, TargetSpec
from chaos.workloads.base import Workload


class PlannableScenario(Protocol):
    """What planning reads of a scenario (chaos.scenario.Scenario)."""

    @property
    def seed(self) -> int: ...
    @property
    def faults(self) -> tuple[FaultSpec, ...]: ...
    @property
    def workload(self) -> Workload: ...
    @property
    def world_size(self) -> int: ...
    def node_ranks(self, node: int) -> tuple[int, ...]: ...


_ENTRY_STRIDE = 1_000_003
"""Each fault entry gets its own stream, Random(seed * stride + entry index): editing one random entry
must not reshuffle what another one plans."""


def plan_faults(scenario: PlannableScenario, seed: int | None = None) -> tuple[PlannedFault, ...]:
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


def _resolve_target(spec: TargetSpec, scenario: PlannableScenario, rng: random.Random) -> Target:
    if spec.kind in ("rank", "ranks"):
        return Target(kind=spec.kind, ranks=spec.ranks, process=spec.process)
    if spec.kind == "node":
        assert spec.node is not None
        return Target(kind="node", ranks=scenario.node_ranks(spec.node), node=spec.node)
    if spec.kind == "all":
        return Target(kind="all", ranks=tuple(range(scenario.world_size)))
    ranks = tuple(sorted(rng.sample(range(scenario.world_size), spec.count)))
    return Target(kind="rank", ranks=ranks) if len(ranks) == 1 else Target(kind="ranks", ranks=ranks)


def _expand(entry: RandomFaults, scenario: PlannableScenario,
            rng: random.Random) -> Iterator[tuple[Trigger, Target, Action]]:
    """One `random:` entry -> its faults. The k-th lands in attempt `entry.attempt + k - 1`: each signal ends
    its attempt, and a resumed attempt passes again every step after its checkpoint, so strictly increasing
    steps are each reached in the attempt after the previous fault.

    Seeded plans must not change: keep the order of the rng calls."""
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
                   Signal(rng.choice(entry.signals)))
        return
    points = entry.candidate_points(scenario.workload)
    steps = sorted(rng.sample(sorted(points), entry.count or 1))
    for k, step in enumerate(steps):
        phase, index = draw_phase(rng, points[step], scenario.workload)
        # only rank 0 reaches the coordinator's points: a fault there on another rank could never land
        rank = 0 if phase in scenario.workload.phases.coordinator_phases else rng.choice(candidate_ranks)
        yield (Trigger(step=step, phase=phase, index=index, attempt=entry.attempt + k),
               Target(kind="rank", ranks=(rank,)),
               Signal(rng.choice(entry.signals)))
