"""The typed form of a scenario file. Nothing downstream of chaos.scenario.load sees raw YAML: the
supervisor, the schedule and the checkers read these frozen dataclasses.

Faults here are still *specifications* (a target may be `random`, an entry may be a seeded `random:`
generator): their types (TargetSpec, ScriptedFault, RandomFaults, FaultSpec) live with the rest of *when* in
chaos.schedule.specs, and chaos.schedule turns them into concrete chaos.plan.PlannedFault objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chaos.plan import RestartPolicy
from chaos.schedule.specs import FaultSpec
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
    "recovery_progress",
    "stalls",
    "node_loss",
)
"""Every checker, in report order; a scenario's `checks:` picks from these (the checkers register the same)."""

LAUNCHERS = ("direct", "torchrun", "ft_launcher", "slurm")
"""ft_launcher: NVIDIA's resiliency extension's launcher (torchrun's command line, plus rank monitors that restart
a rank whose heartbeats stop); torchrun and ft_launcher are the elastic launchers (chaos.supervisor.launcher)."""
ELASTIC = ("torchrun", "ft_launcher")
"""The elastic launchers: one agent per node starts the workers and, under restart.by: job, restarts them."""
ELASTIC_SETS = ("--nnodes", "--nproc-per-node", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--rdzv-conf",
                "--local-addr", "--standalone", "--node-rank", "--master-addr", "--master-port", "--max-restarts",
                "--log-dir", "--redirects", "--tee", "--no-python", "--module", "--run-path")
"""What chaos itself gives an elastic launcher (where the job meets, how many restarts, where it logs, what
it runs): a scenario's launcher_args may not set these (spelt with '-' or '_')."""
RESTARTS_BY = ("chaos", "job")
"""restart.by: who restarts the job after a fault (chaos.plan.RestartPolicy.by)."""
HOSTS = ("local", "netns", "cluster")
"""Where a scenario's nodes live: `local` (every node on this host's loopback) or `netns` (one network
namespace per node on a bridge: real links between them, which a `partition` fault cuts)."""
GOLDEN_MODES = ("exact", "calibrated", "megatron")
MAX_GOLDEN_REPEATS = 20


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
    launcher: Literal["direct", "torchrun", "ft_launcher", "slurm"] = "direct"
    launcher_args: tuple[str, ...] = ()
    """Extra arguments to the elastic launcher (torchrun, ft_launcher) as the job runs it in production, e.g.
    ft_launcher's --ft-rank-heartbeat-timeout=3; never one chaos sets itself (chaos.supervisor.launcher)."""
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
