"""Warm spares (restart.warm: true): what a spare holds before it is handed a rank, that nothing of it outlives
the supervisor, and that a warm or forked restart tests exactly what a cold one does (bitwise on CPU, every
check; the zygote itself: tests/test_fork_server.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chaos.runner import run_scenario
from chaos.scenario import load_scenario_text
from chaos.supervisor.spares.pool import SparePool
from test_megatron_lm_run import megatron_lm_golden  # noqa: F401 - the session's stand-in golden (a fixture)
from test_megatron_lm_run import scenario as megatron_lm_scenario
from workload_runs import small_workload

REPO = Path(__file__).resolve().parents[1]


def gpt3_spec(run_dir: Path):
    scenario = load_scenario_text(f"workload: {small_workload()}\n", "spares.yaml")
    return scenario.workload.launch(run_dir)


def test_a_ready_spare_has_imported_and_holds_nothing_of_the_run(tmp_path):
    """Before its order: torch and megatron-core imported; no socket (no process group, no rendezvous), no
    CUDA driver mapped (no context), and no file of the run open but its own log."""
    run_dir = tmp_path / "run"
    spec = gpt3_spec(run_dir)
    pool = SparePool(spec, run_dir / "spares", {**os.environ, **spec.env})
    try:
        pids = pool.refill()
        assert len(pids) == spec.world_size
        for spare in pool.spares:
            assert spare.poll_ready(timeout_s=120), "a spare never finished its imports"
        for pid in pids:
            process = psutil.Process(pid)
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "libtorch" in maps, "the spare did not import torch"
            assert "libcuda.so" not in maps, "the spare holds a CUDA driver mapping"
            assert process.net_connections(kind="inet") == [], "the spare has a TCP socket (a process group?)"
            files = [f.path for f in process.open_files() if str(run_dir) in f.path]
            assert all(Path(f).parent == run_dir / "spares" for f in files), files
            assert process.parent().pid == os.getpid() and os.getpgid(pid) == pid  # ours, in its own session
    finally:
        pool.close()
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


SPARES_THEN_WAIT = """
import os, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_warm_spares import gpt3_spec
from chaos.supervisor.spares.pool import SparePool
spec = gpt3_spec(Path({run!r}))
pool = SparePool(spec, Path({run!r}) / "spares", {{**os.environ, **spec.env}})
print(" ".join(map(str, pool.refill())), flush=True)
time.sleep(600)
"""


def test_spares_die_with_a_killed_supervisor(tmp_path):
    script = SPARES_THEN_WAIT.format(tests=str(REPO / "tests"), run=str(tmp_path / "run"))
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert pids and all(psutil.pid_exists(p) for p in pids)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
            time.sleep(0.05)
        assert not [p for p in pids if psutil.pid_exists(p)], "spares outlived the supervisor"
    finally:
        if owner.poll() is None:
            owner.kill()


SCENARIO = f"""
name: warm_equivalence
workload: {small_workload()}
restart: {{max_restarts: 3, warm: WARM}}
faults:
  - at: {{step: 3, phase: backward}}
    target: {{rank: 1}}
    signal: SIGKILL
  - at: {{phase: checkpoint.load, attempt: 2}}
    target: {{rank: 0}}
    signal: SIGKILL
"""


def effective_losses(run_dir: Path) -> dict[int, float]:
    from chaos.checkers import views
    from chaos.history import load_run_history

    return {step: record["lm_loss"] for step, (_, record) in views.effective_metrics(load_run_history(run_dir)).items()}


def attempt_starts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "supervisor.jsonl").read_text().splitlines()
            if '"attempt_start"' in line]


def test_forked_and_warm_restarts_test_exactly_what_cold_ones_do(tmp_path, small_golden):
    """The same scenario with every rank forked from the zygote, with warm-spare restarts and with every rank
    cold, against one golden: the same verdict and checks, bitwise the same losses; each run's ranks really
    started the way it says (forked from the first attempt on; spares from the first restart on). The forked
    restart's seconds are broken into every report.model.RESTART_STAGES stage, the zygote's fork first, which
    add up to the whole, and the HTML report shows them."""
    from chaos.report.model import RESTART_STAGES

    results = {}
    for warm in ("fork", "true", "false"):
        scenario = load_scenario_text(SCENARIO.replace("WARM", warm), "warm.yaml")
        results[warm] = run_scenario(scenario, out_dir=tmp_path / warm, golden_path=small_golden,
                                     say=lambda text: None)
    for warm, result in results.items():
        assert result.verdict == "pass", (warm, result.summary)
    checks = {warm: {c["name"]: c["status"] for c in r.checks} for warm, r in results.items()}
    assert checks["fork"] == checks["true"] == checks["false"]
    assert effective_losses(tmp_path / "fork") == effective_losses(tmp_path / "true") == \
        effective_losses(tmp_path / "false")
    starts = {warm: [[p["start"] for p in s["processes"]] for s in attempt_starts(tmp_path / warm)] for warm in results}
    assert starts == {"fork": [["fork"] * 2] * 3, "true": [["cold"] * 2, ["spare"] * 2, ["spare"] * 2],
                      "false": [["cold"] * 2] * 3}, starts
    assert all(isinstance(p.get("fork_mono"), float) and "warm_refusal" not in p
               for s in attempt_starts(tmp_path / "fork") for p in s["processes"])

    restarts = results["fork"].report["timings"]["restart_to_first_resumed_step_s"]
    assert [r["attempt"] for r in restarts] == [3]  # attempt 2 died in its load: it never resumed a step
    for restart in restarts:
        parts = restart["breakdown"]
        assert list(parts) == [f"{key}_s" for key, _ in RESTART_STAGES], parts
        assert abs(sum(parts.values()) - restart["seconds"]) < 0.01, restart
    assert all("fork_s" not in r["breakdown"] for r in results["false"].report["timings"]["restart_to_first_resumed_step_s"])
    assert "Restarts: where the seconds went" in (tmp_path / "fork" / "report.html").read_text()


@pytest.mark.parametrize("warm,started", [("fork", ["fork", "fork", "fork"]), (True, ["cold", "spare", "spare"])],
                         ids=["forked", "spares"])
def test_a_megatron_lm_job_started_warm_matches_its_golden(tmp_path, megatron_lm_golden, warm, started):
    """An unmodified trainer (the stand-in: its own script, Megatron's flags, followed from its logs) whose ranks
    are forked from the zygote (every attempt) or restarted from warm spares (exec_rank --in-process: the
    script runs in the child or the spare, after the hello) passes every check against the golden its
    uninterrupted runs recorded; its ranks really started that way."""
    faults = """
  - at: {step: 3}
    target: {rank: 1}
    signal: SIGKILL
  - at: {step: 5, delay_s: 0.1, attempt: 2}
    target: {rank: 0}
    signal: SIGKILL
"""
    scenario = megatron_lm_scenario(faults)
    scenario = dataclasses.replace(scenario, restart=dataclasses.replace(scenario.restart, warm=warm))
    result = run_scenario(scenario, out_dir=tmp_path / "run", golden_path=megatron_lm_golden, say=lambda text: None)
    assert result.verdict == "pass", result.summary
    starts = attempt_starts(tmp_path / "run")
    assert all(p["role"] == "rank" for s in starts for p in s["processes"])
    assert [{p["start"] for p in s["processes"]} for s in starts] == [{start} for start in started], starts
