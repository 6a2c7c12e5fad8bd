"""The seam between chaos and a system under test, modelled on Jepsen's `DB` protocol: everything the
scenario loader, the schedule, the runner, the supervisor and the checkers need to know about a workload,
and nothing more. A workload kind is one folder under chaos/workloads/ plus one line in its registry.

Two ways of following a rank (Workload.observation):
- "probe": the trainer calls chaos.probe. A fault lands exactly: the probe holds the rank at the planned
  point until the supervisor's signal is out.
- "log": the trainer knows nothing about chaos. Its own log lines and its checkpoint directory are
  watched from outside (chaos.blackbox); a fault lands where the rank is *observed* to be, and the record
  says what was observed and how long after the trigger the signal went out.

Torch-free: the supervisor and the checkers import this and must never pull in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol

ObservationMode = Literal["probe", "log"]


@dataclass(frozen=True)
class InProcessRestarts:
    """A job that re-enters its training function in the same processes after a failure in any rank (NVRx's
    inprocess.Wrapper): each re-entry is the job's next attempt, in the same pids."""

    option: str
    """The workload field that turns it on (for error messages: `workload.<option>`)."""
    restarts: int | None
    """At most this many re-entries (the wrapper's max_iterations - 1); None where the job sets no bound chaos can
    read (Megatron-LM's wrapper has none): restart.max_restarts is then the bound, chaos stopping the job there."""
    hang_timeout_s: float
    """Its own hang detection: a rank making no progress this long makes every rank re-enter."""
    turned_on_by: str = ""
    """What in `option` turns it on, as written (`inprocess_restarts: 2`, `--inprocess-restart`)."""
    nvrx_in_this_python: bool = True
    """The ranks run chaos's own interpreter, so NVRx must be importable here (checked before the run); False when
    the job runs an interpreter of its own (that one's NVRx is the job's business)."""


@dataclass(frozen=True)
class WorkloadFacts:
    """What the checks and the schedule need to know about a workload's run."""

    world_size: int
    nodes: int
    """Simulated hosts: ranks are split evenly; a `node` target kills all ranks of one."""
    train_iters: int
    save_interval: int
    exit_on_sigterm: bool
    """SIGTERM means save and exit (Megatron's --exit-signal-handler): no step may be lost to it."""
    device: str
    """cpu | cuda: decides the default golden comparison (bitwise on cpu, Megatron's tolerances on cuda)."""
    keep_last: int = 0
    """Retention: only the newest k committed checkpoints stay on disk (0 = all)."""
    node_local: str | None = None
    """The workload field that puts its checkpoints on node-local disks (they need hosts: netns), when set."""
    cpu_pins: Mapping[str, str] = field(default_factory=dict)
    """Environment the ranks get to fix their CPU kernels (ATEN_CPU_CAPABILITY, MKL_CBWR), so that CPU goldens
    hold on any CPU able to honour it; part of the golden's environment fingerprint. Empty: not pinned."""
    in_process: InProcessRestarts | None = None
    """The job's own in-process restart layer, when it has one (the workload field that turns it on, its budget
    and its hang detection): a recovery layer only restart.by: job puts under test."""

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nodes

    def node_ranks(self, node: int) -> tuple[int, ...]:
        k = self.ranks_per_node
        return tuple(range(node * k, (node + 1) * k))


@dataclass(frozen=True)
class PhaseRules:
    """Where a fault of this workload can be triggered, and what a trigger's fields mean there."""

    phases: tuple[str, ...]
    """Every phase a trigger may name."""
    step_phases: tuple[str, ...]
    """Reached at every step: the default candidates of a random entry."""
    save_phases: tuple[str, ...]
    """Reached only at steps that save (multiples of save_interval, the last step, a graceful stop)."""
    coordinator_phases: tuple[str, ...] = ()
    """Reached by rank 0 only: a fault there on another rank could never land."""
    index_limits: Mapping[str, tuple[int | None, str]] = field(default_factory=dict)
    """phase -> (highest index, or None when unbounded; what the index counts). Phases not listed take no index."""
    default_phase: str | None = None
    """The phase `at: {step: N}` means when no phase is written (None: a phase must be written)."""
    delay_allowed: bool = False
    """`delay_s` (fire this long after the trigger was observed) is meaningful: observed landings only."""
    exact: bool = True
    """True: the probe holds the rank, landing is exact. False: landing is observed (black box)."""

    def index_limit(self, phase: str) -> tuple[int | None, str] | None:
        return self.index_limits.get(phase)


class CheckpointLayout(Protocol):
    """How a workload's checkpoints look on disk, as the tester reads them (torch-free)."""

    tracker_name: str
    """The file that names the latest committed iteration, inside the checkpoint directory."""

    def problems(self, directory: Path, committed: Mapping[str, Any] | None = None,
                 learned: Mapping[str, int] | None = None) -> list[str]:
        """Everything wrong with a committed iteration directory (empty = intact). `committed` is what the
        commit record said about it (e.g. the file sizes the tester saw when the tracker named it); `learned`
        the file patterns every checkpoint of the job's uninterrupted run had (chaos.state.layout), which
        replace the layout's own list of required files where given."""
        ...


@dataclass(frozen=True)
class WarmStart:
    """How a warm spare (chaos.supervisor.spares.spare) becomes one of this workload's ranks: the modules it imports
    ahead, then the entry point it runs as `python -m module args` or `python script args` would."""

    imports: tuple[str, ...]
    module: str | None = None
    script: str | None = None
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one attempt of a workload: all the supervisor knows about it."""

    argv: tuple[str, ...]
    """The per-rank command (torchrun runs it as its entry point; the direct launcher runs it per rank)."""
    world_size: int
    nodes: int
    """Simulated hosts: ranks are split evenly; a `node` target kills all ranks of one."""
    checkpoint_dir: Path
    train_iters: int
    save_interval: int
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    """Working directory of every rank (None: the supervisor's)."""
    observation: ObservationMode = "probe"
    follower: Callable[..., Any] | None = None
    """observation == "log": builds the attempt's follower (chaos.blackbox.follower.Follower's `reader`
    argument factory: rank -> a reader turning that rank's output lines into history records)."""
    tracker_name: str = "latest_checkpointed_iteration.txt"
    warm: WarmStart | None = None
    """Set where a rank can start from a warm spare (restart.warm); None: always a fresh interpreter."""
    in_process: bool = False
    """The ranks re-enter their training function in the same processes after a failure (WorkloadFacts.in_process):
    the launcher is then told to restart nothing itself, and each re-entry is the job's next attempt."""

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nodes


class Workload(Protocol):
    """A validated workload of some kind (what a scenario's `workload:` mapping became)."""

    kind: str
    facts: WorkloadFacts
    phases: PhaseRules
    layout: CheckpointLayout
    observation: ObservationMode
    golden_prefix: str
    """File-name prefix of the goldens recorded for it (a preset name, or the kind)."""
    final_state_unavailable: str | None
    """Why the final_state check cannot decide for this workload (None: the trainer reports a state hash)."""
    printed_formats: Mapping[str, str]
    """golden metric -> the printf format the trainer prints it with, for workloads read from their logs:
    exact comparison then means equal *as printed*. Empty: values are exact floats."""

    def launch(self, run_dir: Path) -> LaunchSpec:
        """Points the workload at run_dir (its checkpoints live inside it, nothing is written outside),
        writes whatever it needs there, and says how to start an attempt."""
        ...

    def fingerprint_mapping(self) -> Mapping[str, Any]:
        """What decides the numbers (not where files go, nor how often they are saved)."""
        ...

    def describe(self) -> str:
        """One line for people: what runs."""
        ...

    def scenario_mapping(self, as_written: Mapping[str, Any]) -> Mapping[str, Any]:
        """The `workload:` mapping to store in a run directory's scenario.yaml: valid from anywhere (relative
        paths resolved), and validating to this same workload."""
        ...
