"""Each oracle fails on a real trainer with the matching bug (a checker that cannot fail is a
defect). Real ranks (TP2 x DP1, 2 ranks, 6 steps), real signals, the real supervisor; the bugs are the
workload's `bugs:` switches. The failure message names the check and the first diverging step."""

from __future__ import annotations

import pytest

from chaos.runner import run_scenario
from chaos.scenario import load_scenario_text
from chaos.ownership.sweep import sweep_token_holders
from workload_runs import small_workload


@pytest.fixture
def golden_cache(small_golden):
    """Where the clean trainer's golden was recorded (without bugs): each broken run is judged against it."""
    return small_golden.parent


def scenario(bugs: list[str], faults: str, extra_workload: str = "", restart: str = "{max_restarts: 3}"):
    text = f"""
name: broken-{'-'.join(bugs) or 'none'}
workload: {small_workload(f', bugs: {bugs}' + extra_workload)}
restart: {restart}
faults:
{faults}
"""
    return load_scenario_text(text, "test")


def run(tmp_path, golden_cache, bugs, faults, **kwargs):
    return run_scenario(scenario(bugs, faults, **kwargs), out_dir=tmp_path / "run", golden_cache=golden_cache,
                        say=lambda text: None)


def status(result, name: str) -> dict:
    return next(c for c in result.checks if c["name"] == name)


KILL_RANK1_STEP3_BACKWARD = """  - at: {step: 3, phase: backward}
    target: {rank: 1}
    signal: SIGKILL"""


def test_rng_not_restored_fails_trajectory_and_final_state(tmp_path, golden_cache):
    result = run(tmp_path, golden_cache, ["no_rng_restore"], KILL_RANK1_STEP3_BACKWARD)
    assert result.verdict == "fail"
    trajectory = status(result, "trajectory")
    assert trajectory["status"] == "fail" and "step 3" in trajectory["detail"], trajectory
    assert status(result, "final_state")["status"] == "fail"
    assert status(result, "faults_landed")["status"] == "pass"


def test_data_position_not_restored_fails_data_order(tmp_path, golden_cache):
    result = run(tmp_path, golden_cache, ["no_data_position"], KILL_RANK1_STEP3_BACKWARD)
    data_order = status(result, "data_order")
    assert data_order["status"] == "fail" and "step 3" in data_order["detail"], data_order


def test_optimizer_state_not_saved_fails_trajectory(tmp_path, golden_cache):
    result = run(tmp_path, golden_cache, ["no_optimizer_state"], KILL_RANK1_STEP3_BACKWARD)
    assert status(result, "trajectory")["status"] == "fail"
    assert status(result, "final_state")["status"] == "fail"


def test_partial_checkpoint_loaded_fails_resume_point(tmp_path, golden_cache):
    # rank 0 dies after iter_0000004 was renamed into place but before the tracker named it
    result = run(tmp_path, golden_cache, ["load_partial"], """  - at: {step: 4, phase: checkpoint.tracker}
    target: {rank: 0}
    signal: SIGKILL""")
    resume = status(result, "resume_point")
    assert resume["status"] == "fail", resume


def test_tracker_written_before_shards_fails_checkpoints_and_budget(tmp_path, golden_cache):
    result = run(tmp_path, golden_cache, ["tracker_before_shards"], """  - at: {step: 4, phase: checkpoint.shard, index: 1}
    target: {rank: 1}
    signal: SIGKILL""", restart="{max_restarts: 1}")
    assert result.verdict == "fail"
    assert status(result, "checkpoints_load")["status"] == "fail"
    assert status(result, "restart_budget")["status"] == "fail"


def test_tp_shards_swapped_fails_trajectory(tmp_path, golden_cache):
    result = run(tmp_path, golden_cache, ["swap_tp_shards"], KILL_RANK1_STEP3_BACKWARD)
    assert status(result, "trajectory")["status"] == "fail"


def test_rank_that_ignores_sigterm_fails_steps_lost(tmp_path, golden_cache):
    result = run(tmp_path, golden_cache, ["ignore_sigterm"], """  - at: {step: 3, phase: forward}
    target: all
    signal: SIGTERM""")
    steps_lost = status(result, "steps_lost")
    assert steps_lost["status"] == "fail", steps_lost


def test_fault_that_cannot_land_is_an_error_not_a_pass(tmp_path, golden_cache):
    # only rank 0 commits (rename + tracker): a fault planned on rank 1 there never lands
    result = run(tmp_path, golden_cache, [], """  - at: {step: 2, phase: checkpoint.tracker}
    target: {rank: 1}
    signal: SIGKILL""")
    assert result.verdict == "error"
    assert result.exit_code == 3
    assert status(result, "faults_landed")["status"] == "error"


def test_upstream_loss_mask_cache_fails_data_order_and_trajectory(tmp_path, golden_cache):
    """The soak finding (docs/findings/gptdataset-loss-mask-cache.md): with megatron-core's mask cache as
    shipped, the process resumed at step 8 starts on a sample with a pad label and masks that position in
    every later sample. data_order must see it (the data hash covers the loss mask), not only trajectory."""
    from pathlib import Path

    from chaos.scenario import load_scenario

    path = Path(__file__).resolve().parents[1] / "scenarios" / "regression_gptdataset_loss_mask.yaml"
    broken = load_scenario(path, {"workload.bugs": ["upstream_loss_mask_cache"]})
    result = run_scenario(broken, out_dir=tmp_path / "run", golden_cache=golden_cache, say=lambda text: None)
    assert result.verdict == "fail"
    data_order = status(result, "data_order")
    assert data_order["status"] == "fail" and "data hash" in data_order["detail"], data_order
    assert data_order["evidence"]["first_divergence"]["step"] == 8, data_order
    trajectory = status(result, "trajectory")
    assert trajectory["status"] == "fail" and trajectory["evidence"]["first_divergence"]["step"] == 8, trajectory
    assert status(result, "faults_landed")["status"] == "pass"


def test_a_step_skipped_on_resume_fails_resume_point_and_trajectory(tmp_path, golden_cache):
    """The resumed attempt loads iteration 2 and starts at step 4: step 3 is never trained."""
    result = run(tmp_path, golden_cache, ["skip_step_on_resume"], KILL_RANK1_STEP3_BACKWARD)
    assert result.verdict == "fail"
    resume = status(result, "resume_point")
    assert resume["status"] == "fail", resume
    assert status(result, "trajectory")["status"] == "fail"


def test_a_helper_that_detaches_fails_no_survivors_and_is_killed(tmp_path, golden_cache):
    """Rank 0 starts a helper that double-forks, setsid()s, ignores SIGTERM and leaves the attempt's cgroup:
    teardown's tree, group and cgroup passes all miss it. The run-token sweep finds it, kills it, and
    no_survivors fails naming it; nothing carrying the run's token is alive afterwards."""
    result = run(tmp_path, golden_cache, ["detached_helper"], KILL_RANK1_STEP3_BACKWARD)
    assert result.verdict == "fail"
    no_survivors = status(result, "no_survivors")
    assert no_survivors["status"] == "fail" and "escaped" in no_survivors["detail"], no_survivors
    leaked = [item for teardown in no_survivors["evidence"]["teardowns"] for item in teardown["leaked"]]
    assert len(leaked) == 2 and all("-c" in item["command"] for item in leaked), leaked  # one per attempt
    token = (tmp_path / "run" / ".chaos-run-token").read_text()
    assert not sweep_token_holders(f"CHAOS_RUN_TOKEN={token}", exclude=set()), "a helper outlived the run"
    assert status(result, "trajectory")["status"] == "pass"  # the trainer itself resumes correctly


def test_a_watchdog_tighter_than_a_short_pause_fails_stalls(tmp_path, golden_cache):
    """Rank 1 paused for 8 s (hang_timeout_s 25): a correct job rides it out (scenarios/pause_ranks.yaml);
    with `stall_watchdog` the ranks waiting on it give up after 4 s and the attempt dies mid-pause."""
    result = run(tmp_path, golden_cache, ["stall_watchdog"], """  - at: {step: 3, phase: forward}
    target: {rank: 1}
    pause: 8""", restart="{max_restarts: 1, hang_timeout_s: 25}")
    stalls = status(result, "stalls")
    assert stalls["status"] == "fail", stalls
    assert "attempt ended during a 8s pause of rank(s) [1] in attempt 1 (hang_timeout_s=25)" in stalls["detail"]
    assert "rank 0 exited 1" in stalls["detail"]
    assert "stall watchdog" in (tmp_path / "run" / "attempts" / "01" / "rank-0.out").read_text()
    assert status(result, "trajectory")["status"] == "pass"  # the resume itself is right
    assert status(result, "faults_landed")["status"] == "pass"



@pytest.mark.parametrize("bug, named", [
    ("no_rng_restore", "RNG state rng/rank_0.torch_cpu differs"),
    ("zero_moments_on_load", "optimizer exp_avg of "),
    ("no_scheduler_restore", "scheduler train.scheduler.num_steps differs (golden 4, actual 2)"),
])
def test_state_not_restored_fails_checkpoint_state_where_megatrons_tolerance_passes_the_loss(
        tmp_path, golden_cache, bug, named):
    """With Megatron's 5 % on the loss (golden.mode: megatron) the loss check passes a resume that lost its RNG,
    its Adam moments or its scheduler; checkpoint_state compares every checkpoint's state with the golden's,
    bitwise here (one run of pinned CPU numerics), and names what differs, where and since when."""
    text = f"""
name: broken-{bug}
workload: {small_workload(f', bugs: [{bug}]')}
restart: {{max_restarts: 3}}
golden: {{mode: megatron}}
faults:
{KILL_RANK1_STEP3_BACKWARD}
"""
    result = run_scenario(load_scenario_text(text, "test"), out_dir=tmp_path / "run", golden_cache=golden_cache,
                          say=lambda text: None)
    assert status(result, "trajectory")["status"] == "pass", status(result, "trajectory")
    state = status(result, "checkpoint_state")
    assert state["status"] == "fail" and named in state["detail"], state["detail"]
    assert "from iteration 4 on (the first checkpoint of attempt 2)" in state["detail"]
    assert state["evidence"]["first_divergence"]["iteration"] == 4


def test_a_restart_loop_fails_recovery_progress_and_the_budget(tmp_path, golden_cache):
    """Megatron-LM issue #5281's shape: after the kill every restart loads the same checkpoint and dies the
    same way in the load. Within max_restarts each restart looks like recovery; recovery_progress names the
    loop and the iteration every one of them was loading."""
    result = run(tmp_path, golden_cache, ["crash_on_resume"], KILL_RANK1_STEP3_BACKWARD, restart="{max_restarts: 4}")
    assert result.verdict == "fail"
    progress = status(result, "recovery_progress")
    assert progress["status"] == "fail", progress
    assert "attempts 2-5 each tried to load iteration 2 and died the same way" in progress["detail"], progress
    assert "phase checkpoint.load" in progress["detail"] and "a restart loop" in progress["detail"], progress
    assert progress["evidence"]["loops"] == [[2, 3, 4, 5]]
    assert status(result, "restart_budget")["status"] == "fail"
