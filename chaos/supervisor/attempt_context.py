"""What one attempt may use of its run: the run's identity, what it was asked, the services that outlive
attempts, and the run's record. The supervisor (chaos.supervisor.supervisor) builds one per attempt; an
attempt (chaos.supervisor.attempt and its parts) sees the run only through it, never the supervisor itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

from chaos.ownership import lifeline
from chaos.plan import PlannedFault, RestartPolicy
from chaos.supervisor.control_server import ControlServer
from chaos.supervisor.hosts.agents import AgentServer
from chaos.supervisor.hosts.netns import SimulatedHosts
from chaos.supervisor.hosts.slurm import PrivateSlurm
from chaos.supervisor.spares.warm import WarmStarts
from chaos.workloads.base import LaunchSpec


class Record(Protocol):
    def __call__(self, event: str, **fields: Any) -> dict:
        """Writes one record of supervisor.jsonl and returns it (raises InfrastructureError on a full disk)."""


class Interrupt(Protocol):
    """Ctrl-C / SIGTERM to the supervisor: a flag plus a self-pipe whose read end wakes the attempt's selector."""

    requested: str | None
    read_fd: int

    def drain(self) -> None: ...


@dataclass(frozen=True)
class AttemptContext:
    # ---- the run's identity
    run_id: str
    """The run's public name (cgroup and host names)."""
    run_token: str
    """The run's secret: every hello must carry it; the token sweep finds the run's processes by it."""
    run_dir: Path

    # ---- what the run was asked
    launch: LaunchSpec
    launcher: Literal["direct", "torchrun", "ft_launcher", "slurm"]
    launcher_args: tuple[str, ...]
    restart: RestartPolicy
    faults: tuple[PlannedFault, ...]
    """Every fault of the run (an attempt takes those of its number)."""
    control_path: str
    """Where the ranks reach the control server (a Unix socket, or tcp://ADDRESS:PORT on a cluster)."""

    # ---- the services that outlive attempts
    server: ControlServer
    watchdog: lifeline.Watchdog
    interrupt: Interrupt
    warm: WarmStarts | None
    """Warm starts: the run's zygote (restart.warm: fork) or its warm spares (true)."""
    hosts: SimulatedHosts | None
    slurm: PrivateSlurm | None
    agent_server: AgentServer | None
    """hosts: cluster: where each attempt's agents dial in."""
    cgroups: bool
    """Make the attempt a cgroup (False once one could not be made: the process-group fallback only)."""

    # ---- the run's record
    record: Record
    progress: Callable[..., None]
    """The progress line: progress(attempt=, restarts=, step=, force=)."""
    landed: list[dict]
    """The run's fault_landed records: an attempt appends each it writes."""
    missed: list[dict]
    """The run's fault_missed records: an attempt appends each it writes."""
    cgroups_unavailable: Callable[[], None]
    """Called when the attempt's cgroup could not be made: later attempts get cgroups=False."""
