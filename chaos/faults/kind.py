"""What every fault kind is, in one place: the shape its module fills in.

A fault kind (Jepsen's nemesis is the model) is one module holding one frozen dataclass, a subclass of
`Action`, that is at once:

- its **YAML schema and validation**: `from_yaml(read, value, where)` reads the value under the kind's key
  of a scripted fault (`pause: 5`, `straggler: {cpus: 0.25, duration_s: 8}`), `to_yaml()` writes it back;
- its **planned action**: the dataclass's fields are what plan.json holds (`to_dict`, and
  chaos.faults.action_from_dict reading it back);
- **how it is done and how it ends**: `start(context)` does it and returns a `Started`; a fault with a
  duration (a stall) returns a subclass whose `stop(ran_its_course)` undoes it, which the supervisor calls
  from its loop when the duration is over or the attempt ends;
- **what the supervisor and the checks need to know**: the class attributes below (does it end the attempt, does
  it stall it, does it take the host's launcher along, what must the host be).

*When* a fault happens is the schedule's business; *whom* it may touch is the supervisor's (the context
holds only processes it launched and verified). A new kind is one new module plus one registry line in
chaos/faults/__init__.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

MAX_STALL_S = 3600.0
"""The longest pause, partition or straggle a scenario may ask for (an hour): beyond it a stalled job is a
stopped one."""


@dataclass
class FaultContext:
    """What a fault may act on, as the supervisor hands it over."""

    targets: list = field(default_factory=list)
    """chaos.ownership.processes.TrackedProcess of the target ranks (verified, alive when planned)."""
    checkpoint_dir: Path | None = None
    cgroup_name: str | None = None
    """A name of this run's own for a cgroup the action makes (a straggler's): chaos-<run token>-..."""
    hosts: object | None = None
    """chaos.supervisor.hosts.netns.SimulatedHosts, where the scenario has them (a partition cuts a node's link)."""
    node: int | None = None
    """The target node, for a fault that acts on a whole node (a partition, a node loss)."""


@dataclass
class Started:
    """What starting a fault did, for the history."""

    delivered: list[int] | None
    """The pids it reached (a process already gone got nothing); None: it acts on no process (a file)."""
    signal: str | None = None
    """The signal the ranks got, if any, for the `fault_landed` records."""
    landed: dict[str, Any] = field(default_factory=dict)
    """Facts added to each `fault_landed` record (a stall's duration_s, cpus, cgroup)."""
    event: tuple[str, dict[str, Any]] | None = None
    """A history record of its own (chaos.history.CORRUPTED, NODE_LOST) and its fields."""
    cgroup: Path | None = None
    """A cgroup the fault made, which the supervisor's watchdog removes should chaos itself die."""

    def stop(self, ran_its_course: bool) -> dict[str, Any]:
        """Ends a fault with a duration (ran_its_course: its time is over; else its attempt ended first); the
        facts for the `stall_ended` record. A fault without a duration has nothing to stop."""
        return {}


@dataclass(frozen=True)
class Action:
    """A planned fault's what. Subclasses are frozen dataclasses whose fields are the kind's parameters."""

    kind: ClassVar[str]
    """The kind's key in a scenario (`signal:`, `pause:`) and in plan.json (`{"kind": ...}`)."""
    changes_host: ClassVar[bool] = False
    """It changes a host itself (its network, CPU quota or disk): done to simulated hosts only, never to a
    real cluster's nodes (hosts: cluster)."""
    host_needs: ClassVar[str | None] = None
    """What the fault needs each node to have, for a kind that acts on a whole simulated host (hosts: netns,
    target {node: N}): "a network link"; None for a kind that acts on ranks."""

    # ---- what the supervisor and the checks need to know (a kind whose answer depends on its parameters,
    # a signal's, makes the attribute a property) ----------------------------------------------------------
    ends_attempt: ClassVar[bool] = False
    """The target ranks die of it: the supervisor waits for their deaths instead of releasing them (a kind
    with a release_message is released with it, and dies of what its probe does then)."""
    interrupts: ClassVar[bool] = False
    """It may end the ranks (a signal, an exception raised in them), so the steps it costs are counted
    (steps_lost)."""
    takes_host: ClassVar[bool] = False
    """A host dying or stalling of it takes its launcher (a torchrun agent) along, where the target is a
    whole node or all."""
    stall: ClassVar[bool] = False
    """It lasts `duration_s` and then ends (a pause, a straggler, a partition): the `stalls` check's."""
    halts: ClassVar[bool] = False
    """A stall that stops the target outright: to the other ranks it looks like a hang, so one at least as
    long as hang_timeout_s is hang detection's to handle."""
    sends_signal: ClassVar[str | None] = None
    """The signal the target ranks get, where the kind sends one."""
    needs_probe: ClassVar[bool] = False
    """Done by the rank's probe (chaos.probe), on its release: only a rank held at a phase trigger, in a
    workload that runs the probe, can have it (a raise); the scenario reader refuses any other trigger."""

    # ---- the scenario's and plan.json's form -------------------------------------------------------------
    @classmethod
    def from_yaml(cls, read: Any, value: Any, where: str) -> "Action":
        """Reads the value under the kind's key; `read` is the scenario's field reader (errors name `where`)."""
        raise NotImplementedError

    def to_yaml(self) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """A few words for people: `SIGKILL`, `pause 5s`."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    # ---- doing it ----------------------------------------------------------------------------------------
    def start(self, context: FaultContext) -> Started:
        raise NotImplementedError

    def release_message(self) -> dict | None:
        """What the held rank's release carries for a fault done inside the rank (None: a plain release).
        Merged into the supervisor's `{"type": "release", "fault_id": ...}`; the probe acts on it."""
        return None

    def stall_phrase(self) -> str:
        """How the `stalls` check names this stall before its target: `a 5s pause of`."""
        return f"a {getattr(self, 'duration_s', 0):g}s {self.kind} of"
