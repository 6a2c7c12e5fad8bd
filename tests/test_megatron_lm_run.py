"""`kind: megatron_lm` end to end on CPU: a trainer that knows nothing about chaos (tests/trainers/
megatron_like.py: chaos's GPT-3 trainer with no probe, printing Megatron-LM's log lines, started with
Megatron's flags) followed from its output and its checkpoint directory, killed with real signals at a step
boundary, mid-iteration, between checkpoint files and right after the tracker update, restarted, and judged
by every check. Then each check fails on the same trainer with the matching bug (`--chaos-bugs`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.runner import golden_file_name, record_golden, run_scenario
from chaos.scenario import load_scenario_text

STANDIN = Path(__file__).resolve().parent / "trainers" / "megatron_like.py"
ARGS = ("[--tensor-model-parallel-size, 2, --num-layers, 4, --hidden-size, 128, --num-attention-heads, 4, "
        "--seq-length, 128, --micro-batch-size, 2, --global-batch-size, 8, --ckpt-format, fsdp_dtensor, --mock-data")


def scenario(faults: str, bugs: str = "", max_restarts: int = 4, name: str = "megatron_lm_cpu"):
    args = ARGS + (f", --chaos-bugs, {bugs}]" if bugs else "]")
    return load_scenario_text(f"""
name: {name}
workload:
  kind: megatron_lm
  script: {STANDIN}
  nproc_per_node: 2
  device: cpu
  env: {{OMP_NUM_THREADS: "1"}}
  args: {args}
  train_iters: 8
  save_interval: 2
restart: {{max_restarts: {max_restarts}}}
faults:
{faults}
""", "test")


@pytest.fixture(scope="session")
def megatron_lm_golden(chaos_golden_cache) -> Path:
    """The stand-in's uninterrupted run, recorded once (without bugs: every broken run is judged against it)."""
    clean = scenario("  []", name="megatron_lm_cpu_golden")
    target = chaos_golden_cache / golden_file_name(clean)
    if not target.is_file():
        record_golden(clean, target, chaos_golden_cache.parent / "megatron-lm-golden-run")
    return target


def run(tmp_path, golden: Path, faults: str, **kwargs):
    return run_scenario(scenario(faults, **kwargs), out_dir=tmp_path / "run", golden_path=golden,
                        say=lambda text: None)


def check(result, name: str) -> dict:
    return next(c for c in result.checks if c["name"] == name)


FOUR_FAULTS = """
  - at: {step: 3}                                 # right after iteration 3 is logged
    target: {rank: 1}
    signal: SIGKILL
  - at: {step: 5, delay_s: 0.1, attempt: 2}       # 0.1 s into iteration 6
    target: {rank: 0}
    signal: SIGKILL
  - at: {step: 6, phase: checkpoint.shard, index: 1, attempt: 3}   # after the first file of the save of 6
    target: {rank: 1}
    signal: SIGKILL
  - at: {step: 6, phase: checkpoint.tracker, attempt: 4}           # right after the tracker names 6
    target: {rank: 0}
    signal: SIGKILL
"""


def test_megatron_lm_unmodified_trainer_killed_four_ways_passes(tmp_path, megatron_lm_golden):
    result = run(tmp_path, megatron_lm_golden, FOUR_FAULTS)
    assert result.verdict == "pass", result.summary
    statuses = {c["name"]: c["status"] for c in result.checks}
    assert statuses.pop("final_state") == "skip"  # the trainer prints no state hash
    assert statuses.pop("stalls") == "skip"  # no pause, straggler or partition planned
    assert statuses.pop("node_loss") == "skip"  # no node loss planned
    assert set(statuses.values()) == {"pass"}, statuses
    assert "Megatron-LM prints no hash" in check(result, "final_state")["detail"]
    landed = [f["landed"] for f in result.faults]
    assert [(f["step"], f["phase"]) for f in landed] == [(3, "iteration"), (5, "iteration"),
                                                          (6, "checkpoint.shard"), (6, "checkpoint.tracker")]
    for landing in landed:  # observed, not held: the record says what was seen when the signal went out
        assert landing["landing"] == "observed" and landing["observed"]["window_open"], landing
    assert landed[1]["observed"]["latency_s"] >= 0.1 and landed[1]["observed"]["last_iteration_logged"] == 5
    resumed = [a["resumed_from"] for a in result.report["attempts"][1:]]
    # 3 -> 2 (last save 2); mid-6 -> 4; partial save of 6 -> 4; the tracker had named 6 -> 6
    assert resumed == [2, 4, 4, 6], result.report["attempts"]
    trajectory = check(result, "trajectory")
    assert trajectory["evidence"].get("loss_windows"), "each resumed process prints its 2nd iteration as a mean"
    # the history is the probe's vocabulary, written by the follower from the trainer's own lines
    from chaos.history import load_run_history

    metrics = list(load_run_history(tmp_path / "run").attempts[0].events("metrics"))
    assert metrics and all(record.get("observed") for record in metrics)
    assert (tmp_path / "run" / "report.html").is_file()


def test_megatron_lm_resume_from_an_older_checkpoint_fails_resume_point(tmp_path, megatron_lm_golden):
    result = run(tmp_path, megatron_lm_golden, """
  - at: {step: 5}
    target: {rank: 0}
    signal: SIGKILL""", bugs="load_previous", max_restarts=1)
    resume = check(result, "resume_point")
    assert resume["status"] == "fail" and "expected 4" in resume["detail"], resume
    assert check(result, "faults_landed")["status"] == "pass"


def test_megatron_lm_data_position_not_restored_fails_data_order(tmp_path, megatron_lm_golden):
    result = run(tmp_path, megatron_lm_golden, """
  - at: {step: 5}
    target: {rank: 1}
    signal: SIGKILL""", bugs="no_data_position", max_restarts=1)
    data_order = check(result, "data_order")
    assert data_order["status"] == "fail" and "consumed samples" in data_order["detail"], data_order
    assert data_order["evidence"]["first_divergence"]["step"] == 5  # resumed from 4, samples from 0 again


def test_megatron_lm_tracker_written_before_the_shards_fails_checkpoints_load(tmp_path, megatron_lm_golden):
    result = run(tmp_path, megatron_lm_golden, """
  - at: {step: 4, phase: checkpoint.shard, index: 1}
    target: {rank: 1}
    signal: SIGKILL""", bugs="tracker_before_shards", max_restarts=1)
    assert result.verdict == "fail"
    loads = check(result, "checkpoints_load")
    assert loads["status"] == "fail" and "iter_0000004" in loads["detail"], loads


def test_megatron_lm_trainer_that_cannot_resume_is_a_failure_with_its_traceback(tmp_path, megatron_lm_golden):
    """Like upstream's torch_dist + distributed optimizer: every relaunch dies in its load. That is the
    trainer failing (verdict fail, its own exception in the evidence), not the tester (error): the fault
    planned for after the restart never lands, and that does not hide the failure."""
    result = run(tmp_path, megatron_lm_golden, """
  - at: {step: 3}
    target: {rank: 0}
    signal: SIGKILL
  - at: {step: 5, attempt: 2}
    target: {rank: 0}
    signal: SIGKILL""", bugs="crash_on_resume", max_restarts=1)
    assert result.verdict == "fail" and result.exit_code == 1, result.summary
    assert check(result, "faults_landed")["status"] == "error"
    assert check(result, "restart_budget")["status"] == "fail"
    raised = result.report["attempts"][1]["exceptions"]
    assert "AssertionError" in raised[0]["summary"] and "cannot load iteration 2" in raised[0]["summary"]
    assert "raised: AssertionError" in result.summary
