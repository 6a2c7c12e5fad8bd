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


def scenario(faults: str, bugs: str = "", max_restarts: int = 4, name: str = "megatron_lm_cpu",
             golden_mode: str | None = None, extra_args: str = "", args: str = ARGS, env: str = "",
             restart: str = ""):
    args = args + extra_args + (f", --chaos-bugs, {bugs}]" if bugs else "]")
    golden = f"golden: {{mode: {golden_mode}}}\n" if golden_mode else ""
    return load_scenario_text(f"""
name: {name}
workload:
  kind: megatron_lm
  script: {STANDIN}
  nproc_per_node: 2
  device: cpu
  env: {{OMP_NUM_THREADS: "1"{env}}}
  args: {args}
  train_iters: 8
  save_interval: 2
{restart or f"restart: {{max_restarts: {max_restarts}}}"}
{golden}faults:
{faults}
""", "test")


@pytest.fixture(scope="session")
def megatron_lm_golden(chaos_golden_cache) -> Path:
    """The stand-in's uninterrupted run, recorded once (without bugs: every broken run is judged against it); two
    runs, as for any job whose numerics chaos does not pin: identical, so the rule is exact."""
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
    assert statuses.pop("stalls") == "skip"  # no pause, straggler or partition planned
    assert statuses.pop("node_loss") == "skip"  # no node loss planned
    assert set(statuses.values()) == {"pass"}, statuses
    # the trainer prints no state hash: its final checkpoint, read from outside, is compared instead
    assert "the checkpoint of iteration 8" in check(result, "final_state")["detail"]
    state = check(result, "checkpoint_state")
    assert state["evidence"]["compared_iterations"] == [2, 4, 6, 8] and "bitwise" in state["detail"]
    assert result.report["golden"]["rule"] == "2 runs identical at 8 of 8 steps: exact"
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


def test_megatron_lm_under_torchruns_own_restarts_is_judged_on_the_jobs_attempts(tmp_path, megatron_lm_golden):
    """restart.by: job for an unmodified trainer: torchrun restarts it, chaos follows each attempt's log lines
    (the ranks' hello, through chaos.blackbox.exec_rank, names the attempt torchrun's restart count makes).
    The job sets torch 2.13's shared-store opt-out itself (docs/findings/torchrun-restart-shared-store.md:
    without it the restarted group never comes up and the run ends hung)."""
    faults = """
  - at: {step: 3}
    target: {rank: 1}
    signal: SIGKILL
  - at: {step: 6, phase: checkpoint.shard, index: 1, attempt: 2}
    target: {rank: 1}
    signal: SIGKILL
"""
    result = run_scenario(scenario(faults, env=', TORCH_DISABLE_SHARE_RDZV_TCP_STORE: "1"',
                                   restart="launcher: torchrun\nrestart: {by: job, max_restarts: 3}"),
                          out_dir=tmp_path / "run", golden_path=megatron_lm_golden, say=lambda text: None)
    assert result.verdict == "pass", result.summary
    assert [a["resumed_from"] for a in result.report["attempts"][1:]] == [2, 4], result.report["attempts"]
    assert [r["by"] for r in result.report["timings"]["recovery_s"]] == ["job", "job"]
    from chaos import history

    starts = history.load_run_history(tmp_path / "run").supervisor_events(history.ATTEMPT_START)
    assert [s.get("by") for s in starts] == [None, "job", "job"]


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


# ---- the strong verdict: the state compared from outside, the rule measured ------------------------------
ONE_KILL = """
  - at: {step: 3}
    target: {rank: 1}
    signal: SIGKILL"""


@pytest.mark.parametrize("bug, named", [
    ("no_rng_restore", "RNG state rng/rank_0."),
    ("zero_moments_on_load", "optimizer exp_avg of "),
    ("no_scheduler_restore", "scheduler train.scheduler.num_steps differs (golden 4, actual 2)"),
])
def test_megatron_lm_state_not_restored_is_caught_where_megatrons_tolerance_passes_the_loss(
        tmp_path, megatron_lm_golden, bug, named):
    """Keeping Megatron's 5 % on the loss (golden.mode: megatron), the loss check passes a resume that lost its
    RNG, its Adam moments or its scheduler; the checkpoint state, read from outside and held to the golden's
    measured reproducibility (identical runs: bitwise), names what came back wrong and where."""
    result = run_scenario(scenario(ONE_KILL, bugs=bug, max_restarts=1, golden_mode="megatron"),
                          out_dir=tmp_path / "run", golden_path=megatron_lm_golden, say=lambda text: None)
    assert check(result, "trajectory")["status"] == "pass", check(result, "trajectory")
    state = check(result, "checkpoint_state")
    assert state["status"] == "fail" and named in state["detail"], state["detail"]
    assert "from iteration 4 on (the first checkpoint of attempt 2)" in state["detail"]
    assert check(result, "final_state")["status"] == "fail"


NOISE = ", --chaos-noise, 0.01"


@pytest.fixture(scope="module")
def noisy_golden(chaos_golden_cache) -> Path:
    """Two uninterrupted runs of a trainer with fresh gradient noise at every launch: they differ."""
    noisy = scenario("  []", name="megatron_lm_cpu_noisy", extra_args=NOISE)
    target = chaos_golden_cache / golden_file_name(noisy)
    if not target.is_file():
        record_golden(noisy, target, chaos_golden_cache.parent / "megatron-lm-noisy-golden-run", repeats=2)
    return target


def test_a_job_that_is_not_reproducible_gets_a_measured_tolerance_and_does_not_false_fail(tmp_path, noisy_golden):
    from chaos.golden import read_golden

    golden = read_golden(noisy_golden)
    assert golden.calibration.repeats == 2 and not golden.calibration.identical
    result = run_scenario(scenario(ONE_KILL, extra_args=NOISE, max_restarts=1), out_dir=tmp_path / "run",
                          golden_path=noisy_golden, say=lambda text: None)
    assert result.verdict == "pass", result.summary
    assert result.report["golden"]["mode"] == "calibrated"
    assert "uninterrupted runs differ: relative tolerance 4 x the measured spread" in result.report["golden"]["rule"]
    assert "within the spread measured between uninterrupted runs" in check(result, "checkpoint_state")["detail"]
    # the same noise measured exactly would have failed: it is noise the tolerance absorbed
    strict = run_scenario(scenario(ONE_KILL, extra_args=NOISE, max_restarts=1, golden_mode="exact"),
                          out_dir=tmp_path / "strict", golden_path=noisy_golden, say=lambda text: None)
    assert check(strict, "trajectory")["status"] == "fail"


def test_a_noisy_job_that_loses_its_rng_still_fails(tmp_path, noisy_golden):
    result = run_scenario(scenario(ONE_KILL, extra_args=NOISE, bugs="no_rng_restore", max_restarts=1),
                          out_dir=tmp_path / "run", golden_path=noisy_golden, say=lambda text: None)
    assert check(result, "trajectory")["status"] == "fail"
    assert check(result, "checkpoint_state")["status"] == "fail"
    assert "RNG state" in check(result, "checkpoint_state")["detail"]


def test_megatron_lm_completeness_is_learned_from_the_job(tmp_path, chaos_golden_cache):
    """A torch_dist job whose checkpoints lack a file the fallback list asks for (metadata.json) is judged by
    the files its uninterrupted run wrote: complete. The list alone would have failed every checkpoint."""
    from chaos.workloads.megatron_lm.layout import MegatronLayout

    args = ARGS.replace("fsdp_dtensor", "torch_dist")
    target = chaos_golden_cache / "megatron-lm-torch-dist.json"
    layout_scenario = scenario("  []", name="megatron_lm_cpu_torch_dist", args=args)
    if not target.is_file():
        record_golden(layout_scenario, target, chaos_golden_cache.parent / "megatron-lm-torch-dist-run", repeats=1)
    result = run_scenario(scenario(ONE_KILL, args=args, max_restarts=1), out_dir=tmp_path / "run",
                          golden_path=target, say=lambda text: None)
    loads = check(result, "checkpoints_load")
    assert loads["status"] == "pass" and "complete as the uninterrupted run's checkpoints were" in loads["detail"]
    assert loads["evidence"]["complete_means"]["learned_from_the_golden"]["__*_*.distcp"] >= 2  # one per rank at least
    stale = MegatronLayout("torch_dist").problems(tmp_path / "run" / "checkpoints" / "iter_0000008")
    assert stale == ["metadata.json is missing (torch_dist writes it)"]
