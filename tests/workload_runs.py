"""Runs the GPT-3 workload's ranks directly (no supervisor) for the workload's own tests: the same
torchrun environment, one process per rank (forked from a zygote, as the supervisor's ranks are by default),
and the histories the probe writes."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chaos.history import load_run_history
from chaos.ownership.processes import TrackedProcess
from chaos.supervisor.launcher import free_port
from chaos.supervisor.spares.fork_server import ForkServer
from chaos.workloads.base import LaunchSpec, WarmStart
from chaos.workloads.gpt3.config import GPT3Config
from chaos.workloads.gpt3.workload import CPU_PINS, WARM_IMPORTS


def small_workload(extra: str = "") -> str:
    """The suite's smallest real workload (TP2 x DP1, 6 steps) as a YAML flow mapping, `extra` appended
    (", bugs: [...]"). One golden serves every test using it: bugs and save settings are not part of the
    workload fingerprint, so keep this the one place that spells it."""
    return "{world_size: 2, tensor_parallel: 2, train_iters: 6, save_interval: 2" + extra + "}"


_ZYGOTES: dict[tuple, ForkServer] = {}


def _zygote(import_env: dict[str, str]) -> ForkServer:
    """One zygote per import environment for the whole test session (chaos.supervisor.spares.zygote): the
    ranks these tests start are forked from it, as the supervisor's are by default, instead of paying for
    torch and megatron-core's imports in every rank of every attempt."""
    key = tuple(sorted(import_env.items()))
    server = _ZYGOTES.get(key)
    if server is None or not server.alive():
        home = Path(tempfile.mkdtemp(prefix="chaos-test-zygote-"))
        spec = LaunchSpec(argv=(), world_size=1, nodes=1, checkpoint_dir=home, train_iters=0, save_interval=0,
                          warm=WarmStart(imports=WARM_IMPORTS, module="chaos.workloads.gpt3"))
        server = ForkServer(spec, home, {**os.environ, **import_env, "PYTHONUNBUFFERED": "1"}, home,
                            ready_timeout_s=300)
        server.start()
        atexit.register(server.close)
        _ZYGOTES[key] = server
    return server


def run_attempt(config: GPT3Config, run_dir: Path, attempt: int, timeout_s: float = 600,
                disable_probe: bool = False, env: dict[str, str] | None = None) -> list[int]:
    """Starts world_size ranks of the workload (forked from the session's zygote, each with the full torchrun
    environment a cold rank gets) and waits; returns their exit codes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / f"workload-{attempt}.yaml"
    config.write_yaml(config_path)
    history_dir = run_dir / "attempts" / f"{attempt:02d}"
    history_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    import_env = {"OMP_NUM_THREADS": "1", **(CPU_PINS if config.device == "cpu" else {})}
    zygote = _zygote(import_env)
    entry = WarmStart(imports=WARM_IMPORTS, module="chaos.workloads.gpt3", args=(str(config_path),))
    processes = []
    for rank in range(config.world_size):
        rank_env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(config.world_size), LOCAL_RANK=str(rank),
                        LOCAL_WORLD_SIZE=str(config.world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                        CHAOS_HISTORY_DIR=str(history_dir), CHAOS_ATTEMPT=str(attempt), PYTHONUNBUFFERED="1",
                        **import_env)
        rank_env.update(env or {})
        rank_env.pop("CHAOS_CONTROL_SOCKET", None)
        if disable_probe:
            rank_env.pop("CHAOS_HISTORY_DIR")
        output = history_dir / f"rank-{rank}.out"
        forked = zygote.start_rank(rank_env, output, history_dir / f"rank-{rank}.exit", None, rank, 0, entry=entry)
        if forked is not None:
            processes.append(forked)
            continue
        # the zygote refused (e.g. on a GPU machine where an import initialised CUDA): a cold rank, as chaos does
        print(f"workload_runs: rank {rank} starts cold: {zygote.refusal}", file=sys.stderr)
        with open(output, "a") as out:
            popen = subprocess.Popen([sys.executable, "-m", "chaos.workloads.gpt3", str(config_path)],
                                     env=rank_env, stdout=out, stderr=subprocess.STDOUT)
        processes.append(TrackedProcess.from_popen(popen, role="rank", rank=rank))
    codes = []
    try:
        deadline = time.monotonic() + timeout_s
        for process in processes:
            while process.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            codes.append(process.exit_status()[0] if not process.alive() else None)
    finally:
        for process in processes:
            if process.alive():
                process.send("SIGKILL")
            process.reap()
    return codes


def losses(run_dir: Path, attempt: int | None = None) -> dict[int, float]:
    """Rank 0's lm loss per step (the latest attempt wins, like the effective trajectory)."""
    out: dict[int, float] = {}
    for record in load_run_history(run_dir).attempts:
        if attempt is not None and record.index != attempt:
            continue
        for event in record.events("metrics", rank=0):
            out[event["step"]] = event["lm_loss"]
    return out


def events(run_dir: Path, name: str, rank: int | None = None) -> list[dict]:
    found = []
    for record in load_run_history(run_dir).attempts:
        found += list(record.events(name, rank=rank))
    return found


def output_of(run_dir: Path, attempt: int) -> str:
    directory = run_dir / "attempts" / f"{attempt:02d}"
    return "\n".join(path.read_text()[-3000:] for path in sorted(directory.glob("rank-*.out")))
