"""A private Slurm cluster on the simulated hosts (`launcher: slurm` with `hosts: netns`): the real daemons of
Debian's slurm-wlm, started for the run and gone with it.

  head (the switch's namespace, SUBNET.254): munged (a key of the run's own), slurmctld, and `srun`
      for each attempt: a login node that no node fault touches;
  node N (its namespaces): slurmd, which starts the ranks of each job step through slurmstepd.

Every file (slurm.conf, the munge key and socket, state, spool, logs) lives in RUN_DIR/slurm; nothing on
the machine's own Slurm or munge set-up is read or changed. The daemons die with the supervisor
(PR_SET_PDEATHSIG) and are killed at the end of the run. A node loss kills the node's slurmd with the rest
of the node; it is started again (the replaced machine boots and registers) before the next attempt.

Each attempt is one job (`srun` allocates it and runs one step on every node): a restart is a new job, as a
requeue is. The ranks are Slurm tasks: `chaos.supervisor.hosts.slurm_task` gives them torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK, ...) from Slurm's, then exec()s the workload's command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos import safe_files
from chaos.ownership import lifeline
from chaos.supervisor.hosts.netns import HEAD_ADDRESS, SimulatedHosts

TOOLS = ("munged", "slurmctld", "slurmd", "srun", "sinfo", "scontrol")
READY_TIMEOUT_S = 30.0
"""How long the daemons may take to come up and every node to register as idle."""
MAX_BASE_PATH = 48
"""The daemons make Unix sockets under the directory (munge's, slurmstepd's in the spool: NAME_JOB.STEP) and a
socket path must fit in 108 bytes: past this length the directory is reached by a short path instead."""
TASK_MODULE = "chaos.supervisor.hosts.slurm_task"
USABLE = ("idle", "mixed", "allocated", "completing")
"""Node states (sinfo %T) in which a node takes jobs: in service, perhaps still finishing an earlier one."""


def unavailable_reason() -> str | None:
    """None where a private Slurm cluster can be started here; else why not, in words a user can act on."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"launcher: slurm needs {', '.join(missing)} (Debian: apt-get install slurmctld slurmd "
                f"slurm-client munge; scripts/test.sh installs them where it runs as root)")
    if os.geteuid() != 0:
        return "launcher: slurm runs its private cluster's daemons as root"
    return None


class SlurmError(RuntimeError):
    pass


def node_name(node: int) -> str:
    return f"node{node}"


def _conf(directory: str, hosts: SimulatedHosts, cpus: int, munge_socket: str) -> str:
    nodes = "\n".join(f"NodeName={node_name(n)} NodeAddr={hosts.address(n)} CPUs={cpus} State=UNKNOWN"
                      for n in range(hosts.nodes))
    return f"""# written by chaos for one run: a private cluster on its simulated hosts
ClusterName=chaos
SlurmctldHost={hosts.head_name}({HEAD_ADDRESS})
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool-%n
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd-%n.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
# a lost node's new slurmd returns it to service; a dead job's leftovers go fast
ReturnToService=2
SlurmdTimeout=30
KillWait=2
MinJobAge=5
InactiveLimit=0
{nodes}
PartitionName=chaos Nodes={",".join(node_name(n) for n in range(hosts.nodes))} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


@dataclass
class PrivateSlurm:
    hosts: SimulatedHosts
    directory: Path
    conf: Path
    munge_socket: str
    cgroup: lifeline.AttemptCgroup | None = None
    """Where the daemons run, and so every slurmstepd they fork: killed whole at the end, and by the watchdog
    if chaos is killed (a step daemon outlives its slurmd otherwise, waiting on it forever)."""
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    _dir_fd: int | None = None

    @classmethod
    def start(cls, hosts: SimulatedHosts, directory: Path,
              cgroup: lifeline.AttemptCgroup | None = None) -> "PrivateSlurm":
        """munged and slurmctld on the head, slurmd on every node (all in `cgroup`, where given); returns once
        every node is idle. Raises SlurmError (after stopping what it started)."""
        directory = Path(directory).resolve()
        (directory / "state").mkdir(parents=True, exist_ok=True)
        key = directory / "munge.key"
        safe_files.write_file(key, os.urandom(1024), mode=0o600)  # never readable by others
        base, dir_fd = str(directory), None
        if len(base) > MAX_BASE_PATH:
            # the same directory through our open descriptor: valid exactly as long as we (and the daemons) live
            dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
            base = f"/proc/{os.getpid()}/fd/{dir_fd}"
        socket_path = f"{base}/munge.sock"
        conf = directory / "slurm.conf"
        safe_files.write_file(conf, _conf(base, hosts, os.cpu_count() or 1, socket_path))
        cluster = cls(hosts, directory, conf, socket_path, cgroup=cgroup, _dir_fd=dir_fd)
        try:
            cluster._spawn("munged", hosts.enter_head(directory) + [
                "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
                f"--pid-file={directory}/munged.pid", f"--log-file={directory}/munged.log",
                f"--seed-file={directory}/munged.seed"])
            cluster._wait_for(lambda: os.path.exists(socket_path), "munged's socket")
            cluster._spawn("slurmctld", hosts.enter_head(directory) + ["slurmctld", "-D", "-f", str(conf)])
            for node in range(hosts.nodes):
                cluster.start_node(node)
            cluster.wait_idle()
        except BaseException:
            cluster.close()
            raise
        return cluster

    # ---- daemons ----------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What a Slurm client (srun, sinfo) needs to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _daemon_env(self) -> dict[str, str]:
        # the daemons carry nothing of chaos's: a run token in their environment would make slurmd (and the
        # slurmstepd it forks) look like one of the job's processes to the token sweep
        env = {name: value for name, value in os.environ.items() if not name.startswith(("CHAOS_", "SLURM_"))}
        return {**env, **self.env()}

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = safe_files.open_append(self.directory / f"{name}.out")
        try:
            self.daemons[name] = subprocess.Popen(argv, env=self._daemon_env(), stdin=subprocess.DEVNULL,
                                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                                  preexec_fn=lifeline.child_setup(
                                                      os.getpid(), self.cgroup.procs_file if self.cgroup else None))
        except OSError as error:
            raise SlurmError(f"cannot start {argv[0]}: {error}") from error
        finally:
            log.close()

    def start_node(self, node: int) -> None:
        """slurmd on `node` (again, after a node loss: the machine came back and its slurmd registers)."""
        self._stop(f"slurmd-{node}")
        self._spawn(f"slurmd-{node}", self.hosts.enter(node, self.directory) +
                    ["slurmd", "-D", "-N", node_name(node), "-f", str(self.conf)])

    def revive(self) -> list[int]:
        """Starts slurmd again on every node whose slurmd died (a node loss took it with the node); returns
        those nodes. The caller then waits for them to register (wait_idle)."""
        dead = [node for node in range(self.hosts.nodes) if self.daemons[f"slurmd-{node}"].poll() is not None]
        for node in dead:
            # what a cluster's health check does with a dead node: DOWN ends the jobs still completing on it
            # (slurmctld would otherwise wait for the lost slurmd's answer before scheduling there again),
            # then the booted node's slurmd registers, and is back in service (ReturnToService=2; RESUME where
            # it stayed down)
            self._scontrol("update", f"NodeName={node_name(node)}", "State=DOWN", "Reason=chaos node_loss")
            self.start_node(node)
            self._wait_for(lambda: self._in_service(node), f"{node_name(node)} to return to service")
        return dead

    def _in_service(self, node: int) -> bool:
        """Whether the node is usable again; asks for RESUME while it is down and responding (its slurmd
        registered but ReturnToService did not bring it back, or not yet: then RESUME is refused, harmlessly)."""
        state = self.states().get(node_name(node), "")
        if state.startswith("down") and not state.endswith("*"):  # '*': not responding
            self._scontrol("update", f"NodeName={node_name(node)}", "State=RESUME", check=False)
        return state in USABLE

    def _scontrol(self, *args: str, check: bool = True) -> None:
        result = subprocess.run(self.hosts.enter_head(self.directory) + ["scontrol", *args], env=self._daemon_env(),
                                capture_output=True, text=True, timeout=10)
        if check and result.returncode != 0:
            raise SlurmError(f"scontrol {' '.join(args)} failed: {result.stderr.strip() or result.returncode}")

    def _stop(self, name: str) -> None:
        daemon = self.daemons.pop(name, None)
        if daemon is None:
            return
        if daemon.poll() is None:
            try:
                os.killpg(daemon.pid, 9)
            except ProcessLookupError:
                pass
        daemon.wait()

    def states(self) -> dict[str, str]:
        """node name -> its Slurm state (idle, alloc, down*, ...)."""
        result = subprocess.run(self.hosts.enter_head(self.directory) + ["sinfo", "-h", "-N", "-o", "%N %T"],
                                env=self._daemon_env(), capture_output=True, text=True, timeout=10)
        states = {}
        for line in result.stdout.splitlines():
            name, _, state = line.partition(" ")
            states[name] = state.strip()
        return states

    def wait_idle(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every node is in service (idle, or still finishing an earlier job)."""
        self._wait_for(self._all_in_service, "every node to register with slurmctld", timeout_s)

    def _all_in_service(self) -> bool:
        states = self.states()
        return len(states) == self.hosts.nodes and all(state in USABLE for state in states.values())

    def _wait_for(self, condition, what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            dead = [name for name, daemon in self.daemons.items() if daemon.poll() is not None]
            if dead:
                raise SlurmError(f"{', '.join(dead)} exited while waiting for {what}; see {self.directory}/*.out "
                                 f"and *.log")
            if time.monotonic() > deadline:
                raise SlurmError(f"waited {timeout_s:g} s for {what}; see {self.directory}/*.log")
            time.sleep(0.1)

    def close(self) -> None:
        for name in [n for n in self.daemons if n.startswith("slurmd")] + ["slurmctld", "munged"]:
            self._stop(name)
        if self.cgroup is not None:
            self.cgroup.kill()  # the step daemons the slurmds left
            self.cgroup.remove()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def srun_argv(cluster: PrivateSlurm, argv: list[str], world_size: int, nodes: int, job_name: str,
              output: Path, cwd: Path | None) -> list[str]:
    """One job of one step: every rank a task, `world_size / nodes` per node, started on the head."""
    return [*cluster.hosts.enter_head(cwd), "srun", f"--nodes={nodes}", f"--ntasks={world_size}",
            f"--ntasks-per-node={world_size // nodes}", "--overcommit", "--oversubscribe", "--kill-on-bad-exit=0",
            f"--job-name={job_name}", "--export=ALL", f"--output={output}", f"--chdir={cwd or os.getcwd()}",
            sys.executable, "-m", TASK_MODULE, *argv]
