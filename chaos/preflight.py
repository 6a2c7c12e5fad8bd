"""Checks made before anything is launched or renamed: the run directory can be a run directory, and the
machine has what the workload needs. Each failure is an InputError (exit 2), so a scenario that cannot run
here is refused in milliseconds instead of failing in its ranks half a minute later."""

from __future__ import annotations

import os
import re
from pathlib import Path

from chaos.errors import InputError
from chaos.workloads import WorkloadFacts


RUN_MARKER = ".chaos-run"
"""Written first into every run directory chaos makes: what tells an earlier run (moved aside by the next run
there) from a user's own folder (never renamed). Runs made before it existed hold scenario.yaml + plan.json."""


def is_run_directory(path: Path) -> bool:
    """Whether `path` holds a chaos run: the marker, or an older run's scenario.yaml and plan.json."""
    path = Path(path)
    return (path / RUN_MARKER).is_file() or ((path / "scenario.yaml").is_file() and (path / "plan.json").is_file())


def check_holds_a_run(path: Path, flag: str = "--out") -> None:
    """InputError when `path` is a non-empty directory holding no chaos run: such a folder (`--out $PWD`, a
    project, a home directory) is never renamed aside nor written into. Absent or empty: nothing to say."""
    path = Path(path)
    if not path.is_dir() or not any(path.iterdir()) or is_run_directory(path):
        return
    raise InputError(str(path), flag, f"is a non-empty directory that holds no chaos run (no {RUN_MARKER}, nor "
                                      "scenario.yaml and plan.json); chaos moves aside only a directory holding an "
                                      "earlier run: give a new or empty directory")


def check_run_dir(path: Path, flag: str = "--out") -> None:
    """`path` is absent (its nearest existing parent is a writable directory), an empty writable directory,
    or one holding an earlier chaos run (it is moved aside). Anything else is refused: an existing file or
    device node is never moved aside (as root, `--out /dev/null` would otherwise rename /dev/null), nor a
    folder of the user's own, nor the current directory or one above it (`--out .` would move the user's
    own work away from under them)."""
    path = Path(path)
    here = Path.cwd().resolve()
    if path.exists() and (path.resolve() == here or path.resolve() in here.parents):
        raise InputError(str(path), flag, "is the current directory or one above it; give a directory of its own "
                                          "for the run (e.g. runs/NAME): a directory holding an earlier run is "
                                          "moved aside, which must never be the one you work in")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise InputError(str(path), flag, "exists and is not a directory; give a directory for the run (it is "
                                              "created if missing; one holding an earlier run is moved aside)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(str(path), flag, "is not writable by this user")
        check_holds_a_run(path, flag)
        if any(path.iterdir()) and not os.access(path.resolve().parent, os.W_OK | os.X_OK):
            raise InputError(str(path), flag, "holds an earlier run that would be moved aside, but its parent "
                                              "directory is not writable")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(str(path), flag, f"cannot be created: {parent} is not a writable directory")


def check_golden_cache(path: Path | None) -> None:
    if path is not None and path.exists() and not path.is_dir():
        raise InputError(str(path), "--golden-cache", "exists and is not a directory; goldens are kept in a "
                                                      "directory")


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, without importing torch (seconds) or CUDA: CUDA_VISIBLE_DEVICES when
    set, else the /dev/nvidiaN device nodes the driver creates."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    try:
        return sum(1 for name in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", name))
    except OSError:
        return 0


NVRX_INSTALL = "NVIDIA's resiliency extension in this Python: pip install 'chaos[nvrx]' (nvidia-resiliency-ext)"


def _nvrx_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("nvidia_resiliency_ext") is not None


def ft_launcher_unavailable() -> str | None:
    """Why launcher: ft_launcher cannot run here (NVIDIA's resiliency extension not installed), or None."""
    return None if _nvrx_installed() else f"launcher: ft_launcher needs {NVRX_INSTALL}"


def check_hosts(hosts: str, launcher: str, source: str) -> None:
    """Simulated hosts (hosts: netns) need root and the namespace tools, a private Slurm cluster its daemons,
    an existing cluster (hosts: cluster) srun and scontrol, ft_launcher its package; say so before anything
    starts."""
    reason = ft_launcher_unavailable() if launcher == "ft_launcher" else None
    if reason is not None:
        raise InputError(source, "launcher", reason)
    if hosts == "cluster":
        from chaos.supervisor.hosts import slurm_cluster

        reason = slurm_cluster.unavailable_reason()
        if reason is not None:
            raise InputError(source, "hosts", reason)
        try:
            slurm_cluster.controller_address()  # asks scontrol: is there a cluster, and a way back from it
        except slurm_cluster.ClusterError as error:
            raise InputError(source, "hosts", f"hosts: cluster found no Slurm cluster to run on from here: {error}")
        return
    if hosts != "netns":
        return
    from chaos.supervisor.hosts import netns as hosts_module, slurm

    reason = hosts_module.unavailable_reason()
    if reason is not None:
        raise InputError(source, "hosts", reason)
    reason = slurm.unavailable_reason() if launcher == "slurm" else None
    if reason is not None:
        raise InputError(source, "launcher", reason)


def in_process_unavailable(facts: WorkloadFacts) -> str | None:
    """Why a job that restarts in-process (WorkloadFacts.in_process) cannot run here, or None."""
    if facts.in_process is None or not facts.in_process.nvrx_in_this_python or _nvrx_installed():
        return None
    return f"in-process restart needs {NVRX_INSTALL}"


def check_machine(facts: WorkloadFacts, source: str, hosts: str = "local") -> None:
    """A CUDA workload needs one GPU per rank on this host (NCCL refuses two ranks on one GPU); on a cluster
    the GPUs are the nodes' (asked of Slurm in CHAOS_SRUN_ARGS), not this host's. A job that restarts
    in-process needs NVIDIA's resiliency extension where its ranks run (this Python)."""
    reason = in_process_unavailable(facts)
    if reason is not None:
        raise InputError(source, f"workload.{facts.in_process.option}", reason)
    if facts.device != "cuda" or hosts == "cluster":
        return
    gpus = visible_gpus()
    if gpus < facts.world_size:
        raise InputError(source, "workload.device", f"cuda with {facts.world_size} ranks needs {facts.world_size} "
                                                    f"GPUs on this machine; {gpus} visible")
