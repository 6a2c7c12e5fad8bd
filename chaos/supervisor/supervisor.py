"""The run: the attempt loop's outer part. It sets up what outlives attempts (the run directory and its
token, supervisor.jsonl, the control server, the watchdog, warm spares, simulated hosts, a private Slurm
cluster or an existing cluster's agent listener), runs attempts (chaos.supervisor.attempt) until the
workload completes or the restart budget is spent, and closes everything, recording run_end whatever
happened.

The supervisor never imports torch (it must start fast and outlive whatever the ranks do); torchrun agents
import it themselves, as the children they are.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from chaos import control
from chaos import history
from chaos import safe_files
from chaos.errors import InfrastructureError
from chaos.plan import PlannedFault, RestartPolicy, cores_for_warm_spares
from chaos.ownership import lifeline
from chaos.supervisor import disk
from chaos.supervisor.hosts import netns as hosts_module
from chaos.supervisor.hosts import slurm as slurm_module, slurm_cluster
from chaos.supervisor.hosts.agents import AgentServer
from chaos.supervisor.attempt import Attempt
from chaos.supervisor.attempt_context import AttemptContext
from chaos.supervisor.control_server import ControlServer
from chaos.supervisor.hosts.netns import HostsError, SimulatedHosts
from chaos.history import CLUSTER, HOSTS, SLURM
from chaos.supervisor.hosts.slurm import PrivateSlurm, SlurmError
from chaos.supervisor.spares.fork_server import ForkServer
from chaos.supervisor.spares.pool import SparePool
from chaos.supervisor.spares.warm import WarmStarts
from chaos.workloads.base import LaunchSpec

@dataclass(frozen=True)
class SupervisorConfig:
    launch: LaunchSpec
    faults: tuple[PlannedFault, ...]
    restart: RestartPolicy
    launcher: Literal["direct", "torchrun", "ft_launcher", "slurm"]
    run_dir: Path
    hosts: Literal["local", "netns", "cluster"] = "local"
    """netns: each node in a network namespace of its own (chaos.supervisor.hosts.netns), for partitions;
    cluster: the nodes of the Slurm cluster this machine submits to, through agents (chaos.agent)."""
    launcher_args: tuple[str, ...] = ()
    """Extra arguments to the elastic launcher (chaos.scenario.model.Scenario.launcher_args)."""


@dataclass
class SupervisorOutcome:
    outcome: str
    """complete | out_of_restarts | interrupted | error; restart.by: job also job_gave_up | hung"""
    attempts: int
    landed: list[dict] = field(default_factory=list)
    missed: list[dict] = field(default_factory=list)


def supervise(config: SupervisorConfig, on_progress: Callable[[dict], None] | None = None) -> SupervisorOutcome:
    """Runs attempts until the workload completes or the restart budget is spent. Never raises for what the
    ranks do; raises InfrastructureError when the tester itself cannot work (after recording run_end)."""
    return _Supervisor(config, on_progress).run()


class _Interrupt:
    """Ctrl-C / SIGTERM to the supervisor: a flag plus a self-pipe that wakes the selector at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; the caller handles interrupts
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name
        try:
            os.write(self.write_fd, b"!")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        os.close(self.read_fd)
        os.close(self.write_fd)


# ---- the run -------------------------------------------------------------------------------------------
class _Supervisor:
    def __init__(self, config: SupervisorConfig, on_progress: Callable[[dict], None] | None) -> None:
        self.config = config
        self.on_progress = on_progress
        self.run_dir = Path(config.run_dir).resolve()  # ranks may run elsewhere (LaunchSpec.cwd)
        self.started = time.monotonic()
        self.landed: list[dict] = []
        self.missed: list[dict] = []
        self.writer: history.HistoryWriter | None = None
        self.server: ControlServer | None = None
        self.interrupt = _Interrupt()
        self.watchdog: lifeline.Watchdog | None = None
        self.run_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        """The run's public name: in cgroup, host and Slurm job names, which every user of a machine can read."""
        self.run_token = secrets.token_hex(16)
        """The run's secret (128 random bits): every hello on the control socket and the agents' listener must
        carry it, and the token sweep finds the run's processes by it. Only in environments (CHAOS_RUN_TOKEN,
        the agents' CHAOS_AGENT_TOKEN; /proc/PID/environ is its owner's alone) and in the run directory's 0600
        control.RUN_TOKEN_FILE: never on a command line or in a name."""
        self.reserve = disk.DiskReserve(self.run_dir)
        self.warm: WarmStarts | None = None
        """Warm starts (restart.warm, direct launcher, a workload that declares its imports): the run's zygote
        or its warm spares."""
        self.hosts: SimulatedHosts | None = None
        """hosts: netns: the run's simulated hosts (they outlive attempts)."""
        self.slurm: PrivateSlurm | None = None
        """launcher: slurm: the private cluster on the simulated hosts."""
        self.agent_server: AgentServer | None = None
        """hosts: cluster: where each attempt's agents dial in."""
        self.disk_failure: InfrastructureError | None = None
        self.cgroups = True
        """False once a cgroup could not be made: said once, then the process-group fallback only."""

    def record(self, event: str, **fields) -> dict:
        assert self.writer is not None
        try:
            return self.writer.write(event, **fields)
        except OSError as error:
            if error.errno not in disk.DISK_ERRNOS:
                raise
            # room for the closing records and the report; the run stops (InfrastructureError)
            self.reserve.release()
            self.disk_failure = self.disk_failure or disk.disk_error(error, "supervisor.jsonl")
            raise self.disk_failure from None

    def attempt_context(self, control_path: str) -> AttemptContext:
        """What the next attempt may use of the run (built anew for each: `cgroups` may have turned False)."""
        assert self.server is not None and self.watchdog is not None
        config = self.config
        return AttemptContext(
            run_id=self.run_id, run_token=self.run_token, run_dir=self.run_dir,
            launch=config.launch, launcher=config.launcher, launcher_args=config.launcher_args,
            restart=config.restart, faults=config.faults,
            control_path=control_path, server=self.server, watchdog=self.watchdog, interrupt=self.interrupt,
            warm=self.warm, hosts=self.hosts, slurm=self.slurm, agent_server=self.agent_server,
            cgroups=self.cgroups, record=self.record, progress=self.progress, landed=self.landed,
            missed=self.missed, cgroups_unavailable=self._no_more_cgroups)

    def _no_more_cgroups(self) -> None:
        self.cgroups = False

    def _warm_mode(self) -> str | None:
        """"fork", "spares" or None (every rank cold): restart.warm with auto resolved (fork)."""
        config = self.config
        if config.launcher != "direct" or config.hosts != "local" or config.launch.warm is None:
            return None
        if config.restart.warm is None or config.restart.warm == "fork":
            return "fork"
        if config.restart.warm is True and config.restart.max_restarts > 0:
            return "spares"
        return None

    def check_disk(self) -> None:
        """After an attempt: ranks that died on a full disk would die again on every restart."""
        free = self.reserve.low()
        if free is not None:
            self.reserve.release()
            self.disk_failure = self.disk_failure or InfrastructureError(
                f"the run directory's filesystem has {free // 1024} KiB free: checkpoints and histories no "
                "longer fit; the run was stopped")
            raise self.disk_failure

    def progress(self, **fields) -> None:
        if self.on_progress is not None:
            self.on_progress({"faults_landed": len(self.landed), "elapsed_s": time.monotonic() - self.started,
                              **fields})

    def run(self) -> SupervisorOutcome:
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.reserve.take()
        safe_files.write_file(self.run_dir / control.RUN_TOKEN_FILE, self.run_token, mode=0o600)  # the secret
        self.writer = history.HistoryWriter(history.supervisor_history_path(self.run_dir))
        self.record(history.RUN_START, run_dir=str(self.run_dir), launcher=config.launcher, host=socket.gethostname(),
                    world_size=config.launch.world_size, nodes=config.launch.nodes,
                    faults=[f.id for f in config.faults], max_restarts=config.restart.max_restarts)
        self.server = ControlServer(self.run_dir)
        # on a cluster the ranks reach it over TCP, once this host's address is known (in the try below)
        control_path = self.server.start() if config.hosts != "cluster" else ""
        self.watchdog = lifeline.Watchdog()
        # the environment a cold rank imports under; with the token: /proc/PID/environ of what a rank started
        # warm forks (or of a forked rank itself) shows it, as a cold rank's does (the token sweep finds it);
        # the spares and the zygote themselves are excluded from the sweep
        warm_env = {**os.environ, **config.launch.env, "PYTHONUNBUFFERED": "1", control.ENV_RUN_TOKEN: self.run_token}
        mode = self._warm_mode()
        if mode == "fork":
            self.warm = ForkServer(config.launch, self.run_dir / "spares", warm_env, self.run_dir,
                                   ready_timeout_s=config.restart.startup_timeout_s)
            self.record(history.ZYGOTE_STARTED, pid=self.warm.start(), imports=list(config.launch.warm.imports))
        elif mode == "spares":
            self.warm = SparePool(config.launch, self.run_dir / "spares", warm_env)
        self.interrupt.install()
        outcome, attempts_run = "out_of_restarts", 0
        error: BaseException | None = None
        carried = None
        try:
            if config.hosts == "cluster":
                control_path = self._start_cluster()
            if config.hosts == "netns":
                try:
                    self.hosts = SimulatedHosts.create(config.launch.nodes, f"chaos-{self.run_id}", self.run_dir)
                except HostsError as failure:
                    raise InfrastructureError(str(failure)) from failure
                self.record(HOSTS, kind="netns", interface=hosts_module.INTERFACE,
                            addresses=[self.hosts.address(n) for n in range(config.launch.nodes)],
                            node_local=str(self.hosts.mountpoint),
                            disks=[str(self.hosts.disk(n)) for n in range(config.launch.nodes)])
            if config.launcher == "slurm" and config.hosts != "cluster":
                if self.hosts is None:
                    raise InfrastructureError("launcher: slurm runs a private cluster on simulated hosts: hosts: netns")
                cgroup, _ = lifeline.create_cgroup(f"chaos-{self.run_id}-slurm")  # None: hosts.close() still kills
                try:
                    self.slurm = PrivateSlurm.start(self.hosts, self.run_dir / "slurm", cgroup)
                except SlurmError as failure:
                    raise InfrastructureError(str(failure)) from failure
                self.record(SLURM, conf=str(self.slurm.conf), nodes=[slurm_module.node_name(n) for n in
                                                                      range(config.launch.nodes)])
            for number in range(1, config.restart.max_restarts + 2):
                if self.interrupt.requested:
                    outcome = "interrupted"
                    break
                attempts_run = number
                attempt = Attempt(self.attempt_context(control_path), number, carried)
                result = attempt.run()
                carried = attempt.carried_on
                if result in ("complete", "interrupted"):
                    outcome = result
                    break
                if config.restart.by == "job" and carried is None:
                    # the job's launcher gave up (it exited), or the job hung: chaos never restarts it
                    outcome = "hung" if result == "hung" else "job_gave_up"
                    break
                self.check_disk()
        except BaseException as exception:  # noqa: BLE001 - recorded, then re-raised
            outcome, error = "error", exception
        finally:
            if carried is not None:  # stopped between two of the job's own attempts
                carried.abandon(config.restart.teardown_grace_s)
            self.interrupt.restore()
            if self.slurm is not None:
                self.slurm.close()
            if self.hosts is not None:
                self.hosts.close()
            if self.warm is not None:
                self.warm.close()
            if self.agent_server is not None:
                self.agent_server.close()
            self.server.close()
            self.watchdog.close()
        try:
            for fault in config.faults:
                if fault.trigger.attempt > attempts_run:
                    self.missed.append(self.record(
                        history.FAULT_MISSED, fault_id=fault.id, attempt=fault.trigger.attempt,
                        reason=f"attempt {fault.trigger.attempt} never ran (the run ended '{outcome}' after "
                               f"{attempts_run} attempt(s))"))
            self.record(history.RUN_END, outcome=outcome, attempts=attempts_run,
                        error=repr(error) if error is not None else None)
        except InfrastructureError as failure:  # the disk failed even after the reserve was freed
            error = error or failure
        self.progress(attempt=attempts_run, restarts=max(0, attempts_run - 1), force=True)
        self.writer.close()
        self.reserve.release()
        if error is not None:
            if isinstance(error, InfrastructureError):
                raise error
            raise InfrastructureError(f"the supervisor failed: {error!r}") from error
        return SupervisorOutcome(outcome=outcome, attempts=attempts_run, landed=self.landed, missed=self.missed)


    def _start_cluster(self) -> str:
        """hosts: cluster: this host's address the nodes can reach, the agents' listener and the ranks' TCP
        control socket on it; returns the control address for the ranks."""
        try:
            address = slurm_cluster.controller_address()
            for name in (slurm_cluster.ENV_SRUN_ARGS, slurm_cluster.ENV_SRUN_TASK_ARGS):
                slurm_cluster.srun_extra_args(name)  # a bad value is said now, not at the first attempt
        except slurm_cluster.ClusterError as failure:
            raise InfrastructureError(str(failure)) from failure
        try:
            control_path = self.server.start_tcp(address)
            self.agent_server = AgentServer(self.run_token, address, run_id=self.run_id)
        except OSError as failure:
            raise InfrastructureError(f"cannot listen on {address} for the cluster's agents and ranks: "
                                      f"{failure}") from failure
        self.record(CLUSTER, controller=address, agents=self.agent_server.address, control=control_path)
        return control_path
