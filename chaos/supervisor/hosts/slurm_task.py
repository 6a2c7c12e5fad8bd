"""What `srun` runs for each rank (chaos.supervisor.hosts.slurm, chaos.supervisor.hosts.slurm_cluster): torchrun's
environment from Slurm's, then the workload's command as this task's only child, whose end it writes down.

Why a child and not an exec: chaos adopts the rank at its hello, but the rank's parent reaps it, and an exit
code read from /proc races with that reaping (a rank whose end is unknown counts as died, unless its own
history says it finished, which an unmodified trainer's rank 1 never prints). So the task waits for the
rank and writes `rank-<r>.exit` ({pid, returncode, signal}) beside its history, where chaos reads it; the
signals Slurm sends the task (scancel, a time limit) are passed on to the rank.

First the task joins the attempt's cgroup, as every rank chaos launches does before exec: a task is the
child of the node's slurmstepd, not of chaos, and in that cgroup teardown's `cgroup.kill`, the watchdog that
outlives a killed supervisor and the survivor checks reach it like any other rank.

    python -m chaos.supervisor.hosts.slurm_task COMMAND...

Imports nothing but the standard library (and chaos.safe_files): it must cost nothing before the workload starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

from chaos import safe_files  # standard library only, besides chaos.errors

ENV_CGROUP_PROCS = "CHAOS_ATTEMPT_CGROUP_PROCS"
"""The attempt cgroup's cgroup.procs file (unset where the machine gave the attempt no cgroup)."""
ENV_HISTORY_DIR = "CHAOS_HISTORY_DIR"
"""chaos.control.ENV_HISTORY_DIR (not imported: this module must stay standard library only)."""
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
"""What Slurm may send a task (scancel --signal, a time limit's SIGTERM): passed on to the rank."""
ENV_IFNAMES = "CHAOS_GLOO_IFNAMES"
"""HOST=INTERFACE,...: on a cluster, the interface each host reached chaos on, for GLOO_SOCKET_IFNAME where
the job does not set it (a task learns its host only once it runs)."""


def torchrun_env(env: dict[str, str]) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK from SLURM_PROCID, SLURM_NTASKS,
    SLURM_LOCALID, the tasks per node and SLURM_NODEID (MASTER_ADDR and MASTER_PORT come from chaos)."""
    world = int(env["SLURM_NTASKS"])
    nodes = int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(world), "LOCAL_RANK": env["SLURM_LOCALID"],
            "LOCAL_WORLD_SIZE": str(world // nodes), "GROUP_RANK": env["SLURM_NODEID"]}


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m chaos.supervisor.hosts.slurm_task COMMAND...")
    missing = [name for name in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID")
               if name not in os.environ]
    if missing:
        sys.exit(f"chaos.supervisor.hosts.slurm_task runs under srun; {', '.join(missing)} not set")
    procs = os.environ.pop(ENV_CGROUP_PROCS, None)
    if procs:
        try:
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))
        except OSError as error:  # the token sweep still finds it; say why teardown's cgroup will not
            print(f"chaos.supervisor.hosts.slurm_task: could not join the attempt's cgroup {procs}: {error}",
                  file=sys.stderr, flush=True)
    os.environ.update(torchrun_env(dict(os.environ)))
    interfaces = dict(item.split("=", 1) for item in os.environ.pop(ENV_IFNAMES, "").split(",") if "=" in item)
    if "GLOO_SOCKET_IFNAME" not in os.environ and socket.gethostname() in interfaces:
        os.environ["GLOO_SOCKET_IFNAME"] = interfaces[socket.gethostname()]
    history_dir = os.environ.get(ENV_HISTORY_DIR)
    if not history_dir:  # not started by chaos: nobody reads an exit file
        os.execvp(argv[0], argv)
    run_and_record(argv, exit_status_path(history_dir, int(os.environ["RANK"])))


def exit_status_path(history_dir: str | Path, rank: int) -> Path:
    return Path(history_dir) / f"rank-{rank}.exit"


def record_exit(pid: int, status: int, path: Path) -> dict:
    """How process `pid` ended (its wait status), written to `path` whole or not at all: what
    TrackedProcess.status_file reads for a process whose parent, not chaos, reaps it (this shim, the zygote)."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        ended = {"pid": pid, "returncode": -number, "signal": signal.Signals(number).name}
    else:
        ended = {"pid": pid, "returncode": os.WEXITSTATUS(status), "signal": None}
    safe_files.write_file(path, json.dumps(ended))
    return ended


def run_and_record(argv: list[str], status_path: Path) -> None:
    child = os.fork()
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as error:
            print(f"chaos.supervisor.hosts.slurm_task: cannot start {argv[0]!r}: {error}", file=sys.stderr, flush=True)
        os._exit(127)
    for signum in FORWARDED:
        signal.signal(signum, lambda received, frame: _forward(child, received))
    _, status = os.waitpid(child, 0)  # retried across the forwarded signals (PEP 475)
    ended = record_exit(child, status, status_path)
    if ended["signal"] is not None:  # end as the rank did, so srun reports it as Slurm would
        number = signal.Signals[ended["signal"]]
        if number != signal.SIGKILL and number != signal.SIGSTOP:
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    sys.exit(ended["returncode"])


def _forward(child: int, signum: int) -> None:
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
