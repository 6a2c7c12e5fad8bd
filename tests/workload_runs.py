"""Runs the GPT-3 workload's ranks directly (no supervisor) for the workload's own tests: the same
torchrun environment, one process per rank, and the histories the probe writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chaos.history import load_run_history
from chaos.supervisor.launcher import free_port
from chaos.workloads.gpt3.config import GPT3Config
from chaos.workloads.gpt3.workload import CPU_PINS


def small_workload(extra: str = "") -> str:
    """The suite's smallest real workload (TP2 x DP1, 6 steps) as a YAML flow mapping, `extra` appended
    (", bugs: [...]"). One golden serves every test using it: bugs and save settings are not part of the
    workload fingerprint, so keep this the one place that spells it."""
    return "{world_size: 2, tensor_parallel: 2, train_iters: 6, save_interval: 2" + extra + "}"


def run_attempt(config: GPT3Config, run_dir: Path, attempt: int, timeout_s: float = 600,
                disable_probe: bool = False, env: dict[str, str] | None = None) -> list[int]:
    """Starts world_size ranks of the workload and waits; returns their exit codes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / f"workload-{attempt}.yaml"
    config.write_yaml(config_path)
    history_dir = run_dir / "attempts" / f"{attempt:02d}"
    history_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    processes = []
    for rank in range(config.world_size):
        rank_env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(config.world_size), LOCAL_RANK=str(rank),
                        LOCAL_WORLD_SIZE=str(config.world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                        CHAOS_HISTORY_DIR=str(history_dir), CHAOS_ATTEMPT=str(attempt), OMP_NUM_THREADS="1",
                        **(CPU_PINS if config.device == "cpu" else {}))
        rank_env.update(env or {})
        rank_env.pop("CHAOS_CONTROL_SOCKET", None)
        if disable_probe:
            rank_env.pop("CHAOS_HISTORY_DIR")
        with open(history_dir / f"rank-{rank}.out", "w") as out:
            processes.append(subprocess.Popen([sys.executable, "-m", "chaos.workloads.gpt3", str(config_path)],
                                              env=rank_env, stdout=out, stderr=subprocess.STDOUT))
    codes = []
    try:
        for process in processes:
            codes.append(process.wait(timeout=timeout_s))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
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
