"""An existing Slurm cluster (`hosts: cluster`): chaos runs where `srun` works (a login node, or inside an
allocation from salloc/sbatch) and starts, every attempt, one job step of agents, one per node
(`python -m chaos.agent`); the agents dial back. Then `launcher: slurm` starts the ranks as a second step of
the same job (`srun --jobid --overlap`, every rank a Slurm task), which the agents adopt and own;
`launcher: torchrun` has each agent start its node's torchrun.

Nothing is installed or configured on the cluster: the nodes need the same Python environment as the
controller (chaos importable, the workload's packages) and the run directory on a filesystem every node
mounts at the same path (histories, rank output and checkpoints are written there, and read by the checks
as they are on one machine). The agents and the ranks reach the controller over TCP at the address this
host uses to reach slurmctld (or $CHAOS_CONTROLLER_ADDRESS), on ports the kernel picks.

A restart is a new job step (inside an allocation) or a new job (outside one), as a requeue would be.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ENV_CONTROLLER_ADDRESS = "CHAOS_CONTROLLER_ADDRESS"
"""Override: the address of this host that agents and ranks on the nodes can reach."""
ENV_SRUN_ARGS = "CHAOS_SRUN_ARGS"
"""Extra srun options for the agents' step, which makes (or joins) the job and so sizes it: `--partition=...`,
`--account=...`, `--exclusive`, `--gpus-per-node=8`, `--time=...`."""
ENV_SRUN_TASK_ARGS = "CHAOS_SRUN_TASK_ARGS"
"""Extra srun options for the ranks' step (launcher: slurm), e.g. `--gpus-per-task=1 --cpus-per-task=8`."""
TOOLS = ("srun", "scontrol")
AGENT_MODULE = "chaos.agent"
TASK_MODULE = "chaos.supervisor.hosts.slurm_task"


class ClusterError(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"hosts: cluster runs the job on the Slurm cluster this machine submits to, and needs "
                f"{', '.join(missing)} on PATH (run chaos on a login node or inside an allocation)")
    return None


def _slurmctld_address() -> str:
    """The first SlurmctldHost's address, from `scontrol show config` (`name(addr)` or a resolvable name)."""
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ClusterError(f"scontrol show config failed: {error}") from error
    if shown.returncode != 0:
        raise ClusterError(f"scontrol show config failed: {shown.stderr.strip() or shown.stdout.strip()}")
    match = re.search(r"^(?:SlurmctldHost\[0\]|ControlMachine)\s*=\s*([^\s(]+)(?:\(([^)]+)\))?", shown.stdout,
                      re.MULTILINE)
    if match is None:
        raise ClusterError("scontrol show config names no SlurmctldHost")
    name, address = match.group(1), match.group(2)
    if address:
        return address
    try:
        return socket.gethostbyname(name)
    except OSError as error:
        raise ClusterError(f"slurmctld's host {name!r} does not resolve here: {error}") from error


def controller_address() -> str:
    """The address of this host the nodes can reach: $CHAOS_CONTROLLER_ADDRESS, else the local address of the
    route to slurmctld (every node reaches slurmctld, so that network is the cluster's)."""
    override = os.environ.get(ENV_CONTROLLER_ADDRESS)
    if override:
        return override
    target = _slurmctld_address()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, 9))  # no packet is sent: this only asks the kernel for the route
        except OSError as error:
            raise ClusterError(f"no route to slurmctld at {target}: {error}; set {ENV_CONTROLLER_ADDRESS}") from error
        address = probe.getsockname()[0]
    if address.startswith("127."):
        raise ClusterError(f"the route to slurmctld ({target}) is loopback, which other nodes cannot reach; set "
                           f"{ENV_CONTROLLER_ADDRESS} to an address of this host that they can")
    return address


def srun_extra_args(name: str = ENV_SRUN_ARGS) -> list[str]:
    """$CHAOS_SRUN_ARGS (or `name`) split as a shell would; ClusterError naming it when it does not parse."""
    try:
        return shlex.split(os.environ.get(name, ""))
    except ValueError as error:
        raise ClusterError(f"{name}: {error} (expected srun options as in a shell, e.g. "
                           f"'--partition=gpu --exclusive')") from error


def tasks_srun_argv(argv: list[str], world_size: int, nodes: int, job_id: str, job_name: str, output: Path,
                    cwd: Path | None) -> list[str]:
    """The attempt's ranks as one step of the agents' job, `world_size / nodes` tasks a node, alongside the
    agents (--overlap); chaos.supervisor.hosts.slurm_task gives each torchrun's environment."""
    return ["srun", f"--jobid={job_id}", "--overlap", f"--nodes={nodes}", f"--ntasks={world_size}",
            f"--ntasks-per-node={world_size // nodes}", "--kill-on-bad-exit=0", f"--job-name={job_name}",
            "--export=ALL", f"--output={output}", f"--chdir={cwd or os.getcwd()}", *srun_extra_args(ENV_SRUN_TASK_ARGS),
            sys.executable, "-m", TASK_MODULE, *argv]


def agents_srun_argv(nodes: int, ranks_per_node: int, attempt: int, controller: str, job_name: str, output: Path,
                     cwd: Path | None) -> list[str]:
    """One job step: an agent on each of `nodes` nodes. Outside an allocation it makes the job, so it asks
    for a CPU per rank of its node (the ranks' step, or a torchrun's workers, run within it); `--overlap`
    leaves those CPUs to the ranks' step; `--cpu-bind=none`: an agent's binding must not confine the ranks
    a torchrun it starts forks."""
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            f"--cpus-per-task={ranks_per_node}", "--overlap", "--kill-on-bad-exit=0", "--cpu-bind=none", f"--job-name={job_name}", "--export=ALL", f"--output={output}",
            f"--chdir={cwd or os.getcwd()}", *srun_extra_args(), sys.executable, "-m", AGENT_MODULE, f"--controller={controller}",
            f"--attempt={attempt}"]
