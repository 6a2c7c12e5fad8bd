"""The typed form of a scenario file. Nothing downstream of chaos.scenario.load sees raw YAML: the
supervisor, the schedule and the checkers read these frozen dataclasses.

Faults here are still *specifications* (a target may be `random`, an entry may be a seeded `random:`
generator); chaos.schedule turns them into concrete chaos.plan.PlannedFault objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chaos.plan import Action, RestartPolicy, Trigger
from chaos.workloads.base import Workload, WorkloadFacts

CHECK_NAMES = (
    "trajectory",
    "resume_point",
    "steps_lost",
    "data_order",
    "final_state",
    "checkpoint_state",
    "checkpoints_load",
    "faults_landed",
    "no_survivors",
    "restart_budget",
    "stalls",
    "node_loss",
)
"""Every checker, in report order; a scenario's `checks:` picks from these (the checkers register the same)."""

LAUNCHERS = ("direct", "torchrun", "slurm")
HOSTS = ("local", "netns", "cluster")
"""Where a scenario's nodes live: `local` (every node on this host's loopback) or `netns` (one network
namespace per node on a bridge: real links between them, which a `partition` fault cuts)."""
GOLDEN_MODES = ("exact", "calibrated", "megatron")
MAX_GOLDEN_REPEATS = 20

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
        """Step mode: step -> the phases a fault there can land in. Save phases only count at steps that
        save (multiples of save_interval and the last step), so a planned fault never waits in vain."""
        facts, rules = workload.facts, workload.phases
        low, high = self.steps or (1, facts.train_iters)
        phases = self.phases or rules.step_phases
        points: dict[int, tuple[str, ...]] = {}
        for step in range(max(low, 1), min(high, facts.train_iters) + 1):
            saves = step % facts.save_interval == 0 or step == facts.train_iters
            allowed = tuple(p for p in phases if saves or p not in rules.save_phases)
            if allowed:
                points[step] = allowed
        return points


FaultSpec = ScriptedFault | RandomFaults


@dataclass(frozen=True)
class GoldenSpec:
    path: Path | None = None
    """Resolved (absolute) path of the golden file; None = find or record one (chaos.golden.find_golden)."""
    mode: Literal["exact", "calibrated", "megatron"] | None = None
    """As written; None = follow the golden's measured reproducibility (chaos.calibration.decide_rule)."""
    repeats: int | None = None
    """Uninterrupted runs a golden recorded here is made of; None = 1 where the numerics are pinned bitwise
    (chaos's CPU trainer), else 2 (Scenario.golden_repeats resolves it)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    workload: Workload
    """The validated workload (chaos.workloads.base.Workload; not yet pointed at a run directory)."""
    workload_mapping: dict[str, Any]
    """The `workload:` mapping as written (kind, preset + overrides): what the workload kind validated."""
    description: str = ""
    seed: int = 0
    """Every random choice of the schedule derives from it (chaos.schedule.plan_faults)."""
    launcher: Literal["direct", "torchrun", "slurm"] = "direct"
    hosts: Literal["local", "netns", "cluster"] = "local"
    faults: tuple[FaultSpec, ...] = ()
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    golden: GoldenSpec = field(default_factory=GoldenSpec)
    tolerance: dict[str, float] = field(default_factory=dict)
    """Relative tolerances per metric: overriding Megatron's defaults (megatron mode) or the measured ones
    (calibrated mode); an explicit setting wins (chaos.calibration)."""
    accepted_state_differences: dict[str, str] = field(default_factory=dict)
    """Checkpoint entry pattern (fnmatch) -> why it may differ from the golden (a known upstream finding):
    checkpoint_state and final_state report such a difference with its reason and do not fail on it."""
    checks: tuple[str, ...] = CHECK_NAMES
    source: str = field(default="<scenario>", compare=False)
    """Where it was read from, for error messages."""
    base_dir: Path = field(default_factory=Path.cwd, compare=False)
    """Relative paths in the scenario (golden.path) resolve against this first, then the working directory."""

    @property
    def facts(self) -> WorkloadFacts:
        return self.workload.facts

    @property
    def world_size(self) -> int:
        return self.facts.world_size

    @property
    def nodes(self) -> int:
        return self.facts.nodes

    @property
    def train_iters(self) -> int:
        return self.facts.train_iters

    @property
    def device(self) -> str:
        return self.facts.device

    @property
    def golden_mode(self) -> str:
        """The mode without a calibrated golden: exact (bitwise) on CPU, Megatron's tolerances on CUDA, unless
        the scenario says otherwise (chaos.calibration.decide_rule decides with the golden in hand)."""
        if self.golden.mode is not None:
            return self.golden.mode
        return "exact" if self.device == "cpu" else "megatron"

    @property
    def numerics_pinned(self) -> str | None:
        """Why one uninterrupted run is a bitwise reference (the CPU kernels pinned), or None."""
        pins = self.facts.cpu_pins
        if self.device == "cpu" and pins:
            return "CPU numerics pinned: " + " ".join(f"{k}={v}" for k, v in sorted(pins.items()))
        return None

    @property
    def golden_repeats(self) -> int:
        """How many uninterrupted runs a golden recorded for this scenario is made of."""
        if self.golden.repeats is not None:
            return self.golden.repeats
        return 1 if self.numerics_pinned else 2

    def node_ranks(self, node: int) -> tuple[int, ...]:
        return self.facts.node_ranks(node)
