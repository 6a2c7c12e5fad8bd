"""Faults as a scenario writes them, before planning: who a scripted fault hits (TargetSpec, possibly `random`),
a scripted fault in full (ScriptedFault) and a seeded `random:` generator (RandomFaults). chaos.scenario.load
builds them from YAML (and checks a `random:` entry against its candidate points); chaos.schedule.planner turns
them into concrete chaos.plan.PlannedFault objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chaos.faults import Action
from chaos.plan import Trigger
from chaos.schedule.points import candidate_points
from chaos.workloads.base import Workload


@dataclass(frozen=True)
class TargetSpec:
    """Who a scripted fault hits, as written; chaos.schedule resolves it to concrete ranks."""

    kind: Literal["rank", "ranks", "node", "all", "random"]
    ranks: tuple[int, ...] = ()
    """For `rank` (one entry) and `ranks`."""
    node: int | None = None
    """For `node`: simulated host n holds ranks [n*k, (n+1)*k), k = world_size // nodes."""
    count: int = 1
    """For `random`: how many distinct ranks to pick (seeded)."""
    process: str = "rank"
    """What of the rank the fault hits (chaos.plan.Target.process)."""


@dataclass(frozen=True)
class ScriptedFault:
    """One fault written out in full: when (trigger), who (target), what (action)."""

    trigger: Trigger
    target: TargetSpec
    action: Action


@dataclass(frozen=True)
class RandomFaults:
    """A `random:` entry: a seeded generator of signal faults, expanded by chaos.schedule.

    Step mode (count/steps/phases) plans `count` faults at distinct steps; MTBF mode (mtbf_s) plans
    wall-clock faults with exponential inter-arrival times. Every planned fault ends its attempt (all
    signals do: a SIGSTOPped rank is torn down as hung), so the k-th fault is planned into attempt
    `attempt + k - 1` and the schedule stays replayable whatever the seed.
    """

    signals: tuple[str, ...] = ("SIGKILL",)
    ranks: tuple[int, ...] = ()
    """Candidate ranks; () = every rank."""
    attempt: int = 1
    """The attempt the first planned fault lands in."""
    count: int | None = None
    """Step mode: number of faults (default 1). MTBF mode: the most faults (default max_restarts)."""
    steps: tuple[int, int] | None = None
    """Step mode: inclusive step range (default [1, train_iters]); faults beyond train_iters are never planned."""
    phases: tuple[str, ...] = ()
    """Step mode: candidate probe points (default data, forward, backward, optimizer)."""
    mtbf_s: float | None = None
    """MTBF mode: mean seconds between faults, each measured from its attempt's launch."""
    until_s: float | None = None
    """MTBF mode: stop planning once the summed inter-arrival times pass this many seconds."""

    @property
    def is_mtbf(self) -> bool:
        return self.mtbf_s is not None

    def candidate_points(self, workload: Workload) -> dict[int, tuple[str, ...]]:
        """Step mode: step -> the phases a fault there can land in (chaos.schedule.points.candidate_points)."""
        return candidate_points(workload, self.steps, self.phases)


FaultSpec = ScriptedFault | RandomFaults
