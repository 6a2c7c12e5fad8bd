"""How one attempt's processes are started: directly (one process per rank) or through torchrun agents.

Every launched process starts a new session (start_new_session=True): it leads its own process group, so a
group signal at teardown reaches its children too, and a Ctrl-C in the supervisor's terminal reaches only
the supervisor, which then tears the attempt down itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from chaos import safe_files
from chaos import control
from chaos.errors import InfrastructureError
from chaos.supervisor.hosts import netns as hosts_module
from chaos.supervisor.hosts.netns import SimulatedHosts
from chaos.supervisor.hosts import slurm as slurm_module, slurm_cluster, slurm_task
from chaos.agent import protocol as agent_protocol
from chaos.supervisor.hosts.agents import AgentInfo
from chaos.supervisor.hosts.slurm import PrivateSlurm
from chaos.ownership.lifeline import child_setup
from chaos.ownership.processes import TrackedProcess
from chaos.supervisor.spares.warm import WarmStarts
from chaos.workloads.base import LaunchSpec

MASTER_ADDR = "127.0.0.1"

ELASTIC = {
    "torchrun": ["-m", "torch.distributed.run"],
    # NVIDIA's resiliency extension: torchrun's agent and command line, plus a rank monitor per local rank
    # that kills a rank whose heartbeats stop (FT_RANK_MONITOR_IPC_SOCKET in the workers' environment)
    "ft_launcher": ["-m", "nvidia_resiliency_ext.fault_tolerance.launcher"],
}
"""The elastic launchers: one agent per node starting the workers, restarting them itself under
--max-restarts (restart.by: job)."""


@retry(retry=retry_if_exception_type(OSError), stop=stop_after_attempt(20), wait=wait_fixed(0.05), reraise=True)
def free_port() -> int:
    """A TCP port free right now on 127.0.0.1: the kernel picks one, and we check it binds again without
    SO_REUSEADDR (a port in TIME_WAIT or taken in between fails here and is retried, not at rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((MASTER_ADDR, 0))
        port = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as check:
        check.bind((MASTER_ADDR, port))
    return port


@dataclass(frozen=True)
class AttemptLaunch:
    attempt: int
    directory: Path
    port: int
    control_socket: str
    cgroup_procs: str | None = None
    """The attempt's cgroup (chaos.ownership.lifeline): every launched process joins it before exec."""
    run_dir: str = ""
    run_token: str = ""
    """The run's secret (control.RUN_TOKEN_FILE in run_dir): in the ranks' environment only, never in argv or
    a name; empty: none is checked."""
    run_id: str = ""
    """The run's public name: what Slurm job names carry (squeue and ps show them to every user)."""
    job_restarts: int | None = None
    """restart.by: job: torchrun's elastic agent restarts the workers itself, at most this many times; None:
    chaos restarts (torchrun gets --max-restarts=0)."""
    elastic: str = "torchrun"
    """Which elastic launcher runs the nodes' agents (ELASTIC)."""
    launcher_args: tuple[str, ...] = ()
    """The scenario's extra arguments to it (chaos.scenario.model.Scenario.launcher_args)."""
    scratch_dir: str = ""
    """TMPDIR for the launcher and its workers (empty: inherited): where ft_launcher binds its sockets."""


def base_env(spec: LaunchSpec, launch: AttemptLaunch) -> dict[str, str]:
    return {**os.environ, **chaos_env(spec, launch)}


def chaos_env(spec: LaunchSpec, launch: AttemptLaunch) -> dict[str, str]:
    """What chaos sets for every rank (the run's variables, then the workload's own), without this process's
    environment: an agent on another host adds these to its own."""
    env = {}
    env.update({
        control.ENV_HISTORY_DIR: str(launch.directory),
        control.ENV_ATTEMPT: str(launch.attempt),
        control.ENV_RUN_DIR: launch.run_dir,
        control.ENV_RUN_TOKEN: launch.run_token,
        control.ENV_SOCKET: launch.control_socket,
        "PYTHONUNBUFFERED": "1",
    })
    if launch.job_restarts is not None:
        env[control.ENV_RESTARTS_BY] = "job"  # a rank's attempt counts its launcher's restarts (control.rank_attempt)
    env.update(spec.env)
    return env


def _spawn(argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None,
           cgroup_procs: str | None = None) -> subprocess.Popen:
    log = safe_files.open_append(log_path)
    try:
        # preexec: join the attempt's cgroup and die with the supervisor (chaos.ownership.lifeline); the
        # supervisor launches from one thread, the one PR_SET_PDEATHSIG watches.
        return subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd=cwd,
                                preexec_fn=child_setup(os.getpid(), cgroup_procs))
    except OSError as error:
        raise InfrastructureError(f"cannot launch {argv[0]!r}: {error}") from error
    finally:
        log.close()  # the child holds its own copy


def launch_direct(spec: LaunchSpec, launch: AttemptLaunch, warm: WarmStarts | None = None) -> list[TrackedProcess]:
    """One process per rank running spec.argv, with the environment torchrun would give it: started warm
    where `warm` can (a spare, a fork of the run's zygote: chaos.supervisor.spares), else a fresh interpreter.
    A rank that could have been warm but was not carries the reason in `warm_refusal`."""
    processes: list[TrackedProcess] = []
    started: list[subprocess.Popen] = []
    common = base_env(spec, launch)
    per_node = spec.ranks_per_node
    try:
        for rank in range(spec.world_size):
            env = dict(common)
            env.update({
                "RANK": str(rank), "WORLD_SIZE": str(spec.world_size),
                "LOCAL_RANK": str(rank % per_node), "LOCAL_WORLD_SIZE": str(per_node),
                "GROUP_RANK": str(rank // per_node),
                "MASTER_ADDR": MASTER_ADDR, "MASTER_PORT": str(launch.port),
            })
            output = launch.directory / f"rank-{rank}.out"
            node = rank // per_node
            process = (warm.start_rank(env, output, slurm_task.exit_status_path(launch.directory, rank),
                                       launch.cgroup_procs, rank, node) if warm is not None else None)
            if process is not None:
                processes.append(process)
                if process.popen is not None:
                    started.append(process.popen)
                continue
            started.append(_spawn(list(spec.argv), env, output, spec.cwd, launch.cgroup_procs))
            processes.append(TrackedProcess.from_popen(started[-1], role="rank", rank=rank, node=node))
            processes[-1].warm_refusal = warm.refusal if warm is not None else None
    except BaseException:
        _kill_started(started, processes)
        raise
    return processes


def _kill_started(started: list[subprocess.Popen], tracked: list[TrackedProcess]) -> None:
    """A launch that failed partway: nobody would track (or tear down) the processes it already started."""
    for popen in started:
        try:
            os.killpg(popen.pid, signal.SIGKILL)  # each was started in its own session: the group is its own
        except ProcessLookupError:
            pass
        popen.wait()
    for process in tracked:
        if process.popen is None:
            process.send("SIGKILL")  # a fork of the zygote: the pidfd names it
        process.close()


def is_python(executable: str) -> bool:
    return os.path.realpath(executable) == os.path.realpath(sys.executable) or Path(executable).name.startswith("python")


def torchrun_argv(spec: LaunchSpec, launch: AttemptLaunch, node: int, run_id: str,
                  hosts: SimulatedHosts | None = None) -> list[str]:
    """One node's torchrun agent; with simulated hosts it runs in the node's namespaces, meets the others at
    node 0's address and tells its workers its own (--local-addr: the hostname resolves nowhere)."""
    if hosts is None:
        return torchrun_command(spec, launch, node, run_id, f"{MASTER_ADDR}:{launch.port}")
    return [*hosts.enter(node, spec.cwd),
            *torchrun_command(spec, launch, node, run_id, f"{hosts.address(0)}:{launch.port}", hosts.address(node))]


def torchrun_command(spec: LaunchSpec, launch: AttemptLaunch, node: int, run_id: str, endpoint: str,
                     local_address: str | None = None) -> list[str]:
    """torchrun for `node`, meeting the others over c10d at `endpoint` (HOST:PORT). `local_address`: this
    host's address, said outright: torchrun decides who hosts the rendezvous store by resolving hostnames,
    which a simulated host's name (or a cluster's internal one) may not do, so node 0 is named the host."""
    argv = list(spec.argv)
    if argv and is_python(argv[0]):
        entry = argv[1:]  # torchrun runs the entry with its own interpreter; it accepts `-m module`
    else:
        entry = ["--no-python", *argv]
    local = ([f"--local-addr={local_address}", f"--rdzv-conf=is_host={1 if node == 0 else 0}"]
             if local_address is not None else [])
    return [
        sys.executable, *ELASTIC[launch.elastic],
        f"--nnodes={spec.nodes}", f"--nproc-per-node={spec.ranks_per_node}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", *local,
        f"--rdzv-id=chaos-{launch.attempt}-{run_id}",
        f"--max-restarts={launch.job_restarts or 0}", "--monitor-interval=0.1",
        # torchrun would otherwise make a log directory under /tmp; keep everything in the run dir
        f"--log-dir={launch.directory / f'torchrun-{node}'}",
        *launch.launcher_args,
        *entry,
    ]


def launch_torchrun(spec: LaunchSpec, launch: AttemptLaunch, hosts: SimulatedHosts | None = None) -> list[TrackedProcess]:
    """`nodes` torchrun agents meeting over c10d rendezvous on 127.0.0.1: several simulated hosts. The
    agents set the ranks' environment themselves; the rank pids come later from the probes' hellos."""
    env = base_env(spec, launch)
    # The agents read the rendezvous id from the command line; a stale TORCHELASTIC_* from an outer
    # torchrun (chaos run inside a torchrun job) must not leak in.
    for name in [n for n in env if n.startswith("TORCHELASTIC_")]:
        del env[name]
    if launch.job_restarts is not None and "LOGLEVEL" not in spec.env:
        # the agent says when it saw a worker group fail ("Worker group FAILED. ... will restart worker
        # group") only at INFO: that line is when the job detected the fault (chaos.supervisor.job_log)
        env["LOGLEVEL"] = "INFO"
    if launch.scratch_dir:
        env["TMPDIR"] = launch.scratch_dir
    if hosts is not None:
        env["GLOO_SOCKET_IFNAME"] = hosts_module.INTERFACE  # collectives over the node's link, not loopback
        env[hosts_module.ENV_NODE_LOCAL] = str(hosts.mountpoint)
    run_id = uuid.uuid4().hex[:12]
    processes: list[TrackedProcess] = []
    started: list[subprocess.Popen] = []
    try:
        for node in range(spec.nodes):
            argv = torchrun_argv(spec, launch, node, run_id, hosts)
            started.append(_spawn(argv, env, launch.directory / f"agent-{node}.out", spec.cwd, launch.cgroup_procs))
            processes.append(TrackedProcess.from_popen(started[-1], role="agent", node=node))
    except BaseException:
        _kill_started(started, processes)
        raise
    return processes


def launch_slurm(spec: LaunchSpec, launch: AttemptLaunch, cluster: PrivateSlurm) -> list[TrackedProcess]:
    """One job per attempt: `srun` on the head runs every rank as a Slurm task on the simulated nodes. The
    rank pids come later from the probes' hellos (a task is slurmstepd's child, not ours)."""
    env = {name: value for name, value in base_env(spec, launch).items()
           # an outer Slurm job's variables (chaos run inside an allocation) must not steer this cluster's srun
           if not name.startswith(("TORCHELASTIC_", "SLURM_"))}
    env.update(cluster.env())
    env.update({"MASTER_ADDR": cluster.hosts.address(0), "MASTER_PORT": str(launch.port),
                "GLOO_SOCKET_IFNAME": hosts_module.INTERFACE,
                hosts_module.ENV_NODE_LOCAL: str(cluster.hosts.mountpoint)})
    if launch.cgroup_procs:  # each task joins it before exec (slurmstepd, not we, is its parent)
        env[slurm_task.ENV_CGROUP_PROCS] = launch.cgroup_procs
    argv = slurm_module.srun_argv(cluster, list(spec.argv), spec.world_size, spec.nodes,
                                  job_name=f"chaos-a{launch.attempt}-{launch.run_id}",
                                  output=launch.directory / "rank-%t.out", cwd=spec.cwd)
    return [_spawn_srun(argv, env, launch.directory / "srun.out", spec, launch)]


def _spawn_srun(argv: list[str], env: Mapping[str, str], log_path: Path, spec: LaunchSpec,
                launch: AttemptLaunch) -> TrackedProcess:
    """An srun of the attempt, tracked as its agent: its exit ends the step it runs."""
    popen = _spawn(argv, env, log_path, spec.cwd, launch.cgroup_procs)
    try:
        return TrackedProcess.from_popen(popen, role="agent")
    except BaseException:
        _kill_started([popen], [])
        raise


def _cluster_env(spec: LaunchSpec, launch: AttemptLaunch) -> dict[str, str]:
    # a stale TORCHELASTIC_* from an outer torchrun must not reach the ranks; SLURM_* stays: inside an
    # allocation, srun finds its job through them
    return {name: value for name, value in base_env(spec, launch).items() if not name.startswith("TORCHELASTIC_")}


def launch_agents(spec: LaunchSpec, launch: AttemptLaunch, controller: str) -> TrackedProcess:
    """hosts: cluster: one job step of agents, one per node, on the cluster this machine submits to; they dial
    `controller` and start the ranks when told (chaos.supervisor.hosts.agents). Tracked here as the attempt's agent:
    srun, whose exit ends the step."""
    env = _cluster_env(spec, launch)
    # the agents' token under another name: what carries CHAOS_RUN_TOKEN is swept as the run's, and srun may
    # run on a node (chaos inside an allocation); the ranks get CHAOS_RUN_TOKEN from their own step or order
    env[agent_protocol.ENV_AGENT_TOKEN] = env.pop(control.ENV_RUN_TOKEN)
    argv = slurm_cluster.agents_srun_argv(spec.nodes, spec.ranks_per_node, launch.attempt, controller,
                                          job_name=f"chaos-a{launch.attempt}-{launch.run_id}",
                                          output=launch.directory / "agent-%n.out", cwd=spec.cwd)
    return _spawn_srun(argv, env, launch.directory / "srun.out", spec, launch)


def _gloo_interface_unset(spec: LaunchSpec) -> bool:
    return "GLOO_SOCKET_IFNAME" not in spec.env and "GLOO_SOCKET_IFNAME" not in os.environ


def launch_cluster_tasks(spec: LaunchSpec, launch: AttemptLaunch, agents: Mapping[int, AgentInfo],
                         port: int) -> TrackedProcess:
    """launcher: slurm on a cluster: the ranks as a second step of the agents' job (every rank a Slurm task,
    torchrun's environment from Slurm's, meeting at node 0's address); the agents adopt them at their hello.
    GLOO_SOCKET_IFNAME (unless set) is the interface each host reached the controller on: the cluster's
    network, not whatever its hostname resolves to."""
    env = _cluster_env(spec, launch)
    env.update({"MASTER_ADDR": agents[0].address, "MASTER_PORT": str(port)})
    if _gloo_interface_unset(spec):
        env[slurm_task.ENV_IFNAMES] = ",".join(f"{a.host}={a.interface}" for a in agents.values() if a.interface)
    argv = slurm_cluster.tasks_srun_argv(list(spec.argv), spec.world_size, spec.nodes, str(agents[0].job_id),
                                         job_name=f"chaos-a{launch.attempt}-{launch.run_id}",
                                         output=launch.directory / "rank-%t.out", cwd=spec.cwd)
    return _spawn_srun(argv, env, launch.directory / "srun-ranks.out", spec, launch)


def torchrun_orders(spec: LaunchSpec, launch: AttemptLaunch, agents: Mapping[int, AgentInfo],
                    port: int) -> dict[int, list[dict]]:
    """launcher: torchrun on a cluster: what each node's agent starts, one torchrun meeting the others over
    c10d at node 0's address (its workers are adopted when they say hello); GLOO_SOCKET_IFNAME as above."""
    run_id = uuid.uuid4().hex[:12]
    orders: dict[int, list[dict]] = {}
    for node, agent in sorted(agents.items()):
        env = chaos_env(spec, launch)
        if agent.interface and _gloo_interface_unset(spec):
            env["GLOO_SOCKET_IFNAME"] = agent.interface
        argv = torchrun_command(spec, launch, node, run_id, f"{agents[0].address}:{port}", agent.address)
        orders[node] = [{"role": "agent", "argv": argv, "env": env, "cwd": str(spec.cwd) if spec.cwd else None,
                         "output": str(launch.directory / f"torchrun-{node}.out")}]
    return orders


def launch(kind: Literal["direct", "torchrun", "ft_launcher", "slurm"], spec: LaunchSpec, attempt: AttemptLaunch,
           warm: WarmStarts | None = None, hosts: SimulatedHosts | None = None,
           slurm: PrivateSlurm | None = None) -> list[TrackedProcess]:
    if kind == "direct":
        return launch_direct(spec, attempt, warm)
    if kind in ELASTIC:
        return launch_torchrun(spec, attempt, hosts)
    if kind == "slurm" and slurm is not None:
        return launch_slurm(spec, attempt, slurm)
    raise ValueError(f"unknown launcher {kind!r} (or slurm without its cluster); expected 'direct', 'torchrun', "
                     f"'ft_launcher' or 'slurm'")
