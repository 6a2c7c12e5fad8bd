"""What `srun` runs for each rank (chaos.supervisor.slurm): torchrun's environment from Slurm's, then the
workload's command in this process (exec), so the rank is the Slurm task itself.

First the task joins the attempt's cgroup, as every rank chaos launches does before exec: a task is the
child of the node's slurmstepd, not of chaos, and in that cgroup teardown's `cgroup.kill`, the watchdog that
outlives a killed supervisor and the survivor checks reach it like any other rank.

    python -m chaos.supervisor.slurm_task COMMAND...

Imports nothing but the standard library: it must cost nothing before the workload starts.
"""

from __future__ import annotations

import os
import socket
import sys

ENV_CGROUP_PROCS = "CHAOS_ATTEMPT_CGROUP_PROCS"
"""The attempt cgroup's cgroup.procs file (unset where the machine gave the attempt no cgroup)."""
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
        sys.exit("usage: python -m chaos.supervisor.slurm_task COMMAND...")
    missing = [name for name in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID")
               if name not in os.environ]
    if missing:
        sys.exit(f"chaos.supervisor.slurm_task runs under srun; {', '.join(missing)} not set")
    procs = os.environ.pop(ENV_CGROUP_PROCS, None)
    if procs:
        try:
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))
        except OSError as error:  # the token sweep still finds it; say why teardown's cgroup will not
            print(f"chaos.supervisor.slurm_task: could not join the attempt's cgroup {procs}: {error}",
                  file=sys.stderr, flush=True)
    os.environ.update(torchrun_env(dict(os.environ)))
    interfaces = dict(item.split("=", 1) for item in os.environ.pop(ENV_IFNAMES, "").split(",") if "=" in item)
    if "GLOO_SOCKET_IFNAME" not in os.environ and socket.gethostname() in interfaces:
        os.environ["GLOO_SOCKET_IFNAME"] = interfaces[socket.gethostname()]
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
