"""The soak's draws: explicit faults for one soak cycle, drawn from its seed alone (signal, target: a rank or a
whole simulated node, step + phase or a wall-clock time from an MTBF), one fault per attempt, at strictly
increasing steps so every fault is reached after the previous restart. chaos.soak.cycles puts them into the
scenario a cycle runs and validates it.

The scenario comes in as a DrawableScenario (what chaos.scenario.Scenario offers): chaos.schedule never imports
chaos.scenario. Seeded draws must not change: keep the order of the rng calls.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from chaos.errors import InputError
from chaos.faults.signals import SIGNALS, Signal
from chaos.plan import RestartPolicy, Trigger
from chaos.schedule.points import candidate_points, draw_phase, mtbf_gap_s
from chaos.schedule.specs import ScriptedFault, TargetSpec
from chaos.workloads.base import Workload

DEFAULT_SIGNALS = ("SIGKILL", "SIGTERM", "SIGSEGV", "SIGABRT")
"""Signals a soak draws from unless told otherwise. SIGSTOP is left out by default: each one costs a full
hang timeout (restart.hang_timeout_s) before the supervisor may tear the attempt down."""

NODE_TARGET_PROBABILITY = 0.25
"""With several simulated nodes, this share of faults takes a whole node down (a host dropping out)."""


class DrawableScenario(Protocol):
    """What the soak's draws read of a scenario (chaos.scenario.Scenario)."""

    @property
    def source(self) -> str: ...
    @property
    def workload(self) -> Workload: ...
    @property
    def restart(self) -> RestartPolicy: ...
    @property
    def world_size(self) -> int: ...
    @property
    def nodes(self) -> int: ...


def soak_phases(scenario: DrawableScenario) -> tuple[str, ...]:
    """Where a soak draws its faults: every step phase and every save phase of the workload. (Its
    coordinator phases are reached by rank 0 only: a fault there targets rank 0 or its node.)"""
    rules = scenario.workload.phases
    return tuple(dict.fromkeys(rules.step_phases + rules.save_phases))


@dataclass(frozen=True)
class ScheduleOptions:
    signals: tuple[str, ...] = DEFAULT_SIGNALS
    max_faults: int = 2
    """At most this many faults per cycle (and never more than restart.max_restarts)."""
    mtbf_s: float | None = None
    """When set, faults are wall-clock triggered with exponential gaps of this mean (measured from each
    attempt's launch) instead of step + phase triggers."""

    def __post_init__(self) -> None:
        for signal in self.signals:
            if signal not in SIGNALS:
                raise InputError("--signals", signal, f"unknown signal; expected some of {list(SIGNALS)}")
        if not self.signals:
            raise InputError("--signals", "", "expected at least one signal")
        if self.max_faults < 1:
            raise InputError("--max-faults", str(self.max_faults), "expected an integer >= 1")
        if self.mtbf_s is not None and self.mtbf_s <= 0:
            raise InputError("--mtbf-s", str(self.mtbf_s), "expected a number of seconds > 0")


def random_faults(base: DrawableScenario, seed: int,
                  options: ScheduleOptions = ScheduleOptions()) -> tuple[ScriptedFault, ...]:
    """Explicit faults drawn from `seed` only (a string seed: Python hashes it with SHA-512, stable across
    runs and versions)."""
    rng = random.Random(f"chaos-soak/{seed}")
    budget = min(options.max_faults, base.restart.max_restarts)
    if budget < 1:
        raise InputError(base.source, "restart.max_restarts",
                         "a soak cycle needs at least one restart for its faults; raise restart.max_restarts")
    workload = base.workload
    if options.mtbf_s is not None:
        count = rng.randint(1, budget)
        return tuple(ScriptedFault(trigger=Trigger(attempt=k + 1, after_s=mtbf_gap_s(rng, options.mtbf_s)),
                                   target=_draw_target(rng, base), action=Signal(rng.choice(options.signals)))
                     for k in range(count))
    points = candidate_points(workload, phases=soak_phases(base))
    count = rng.randint(1, min(budget, len(points)))
    faults = []
    for k, step in enumerate(sorted(rng.sample(sorted(points), count))):
        phase, index = draw_phase(rng, points[step], workload)
        faults.append(ScriptedFault(trigger=Trigger(step=step, phase=phase, index=index, attempt=k + 1),
                                    target=_draw_target(rng, base, coordinator_only=phase in workload.phases.coordinator_phases),
                                    action=Signal(rng.choice(options.signals))))
    return tuple(faults)


def _draw_target(rng: random.Random, base: DrawableScenario, coordinator_only: bool = False) -> TargetSpec:
    if base.nodes > 1 and rng.random() < NODE_TARGET_PROBABILITY:
        return TargetSpec(kind="node", node=0 if coordinator_only else rng.randrange(base.nodes))
    return TargetSpec(kind="rank", ranks=(0 if coordinator_only else rng.randrange(base.world_size),))
