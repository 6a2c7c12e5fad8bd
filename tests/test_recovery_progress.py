"""recovery_progress on synthetic histories: restarts that advance pass; the same failure from the same
checkpoint more than RESTART_LOOP_LIMIT times in a row (Megatron-LM issue #5281) fails."""

from __future__ import annotations

from chaos import history as h
from chaos.checkers import run_check
from chaos.checkers.recovery_progress import RESTART_LOOP_LIMIT
from synthetic_runs import SyntheticRun, standard_run

NAME = "recovery_progress"


def judge(run: SyntheticRun):
    return run_check(run.context(), NAME)


def looping_run(tmp_path, failed: int, faulted: bool = False, stop_steps=None, **failure) -> SyntheticRun:
    """Attempt 1 trains to step 4 (saving 4) and dies at step 5 of its own; then `failed` attempts each load
    iteration 4 and die at step 5 (or `stop_steps[i]`); `faulted`: a planned SIGKILL lands in each of them."""
    run = SyntheticRun(tmp_path)
    run.failed_attempt(1, resume_from=0, stop_step=5)
    for number in range(2, failed + 2):
        fault = run.fault(f"f{number}", step=5, phase="forward", ranks=(0,), attempt=number) if faulted else None
        stop = stop_steps[number - 2] if stop_steps else 5
        run.failed_attempt(number, resume_from=4, stop_step=stop, fault=fault, **failure)
    run.finish("out_of_restarts")
    return run


def test_restarts_that_each_resume_later_pass(tmp_path):
    run = SyntheticRun(tmp_path)
    run.failed_attempt(1, resume_from=0, stop_step=6)  # the job's own failures, no fault planned
    run.failed_attempt(2, resume_from=4, stop_step=9)
    run.attempt(3, resume_from=8, last_step=12, end="complete")
    run.finish()
    result = judge(run)
    assert result.status == "pass", result.detail
    assert result.detail == "every recovery advanced: 2 restart(s), the longest run of identical failures was 1"
    rows = result.evidence["attempts"]
    assert [(r["attempt"], r["resume_from"], r["outcome"]) for r in rows] == [(2, 4, "crashed"), (3, 8, "complete")]
    assert rows[0]["stopped_at"] == {"step": 9, "phase": "forward"} and rows[0]["exits"] == [[1, None]]


def test_the_standard_run_with_its_faults_passes(tmp_path):
    result = judge(standard_run(tmp_path))
    assert result.status == "pass", result.detail
    assert "2 restart(s)" in result.detail and "was 0" in result.detail
    assert [r["fault_landed"] for r in result.evidence["attempts"]] == [True, False]


def test_four_identical_failures_from_one_checkpoint_are_a_restart_loop(tmp_path):
    result = judge(looping_run(tmp_path, failed=4))
    assert result.status == "fail"
    assert result.detail == ("attempts 2-5 each loaded iteration 4 and died the same way (crashed at step 5 phase "
                             "forward, exit 1): a restart loop; every recovery must advance")
    assert result.evidence["loops"] == [[2, 3, 4, 5]] and result.evidence["longest_identical_failures"] == 4
    assert all(r["resume_from"] == 4 and not r["fault_landed"] for r in result.evidence["attempts"])


def test_attempts_dying_in_the_load_itself_name_the_iteration_they_were_loading(tmp_path):
    """crash_on_resume's shape (and Megatron-LM's on a corrupt checkpoint): no checkpoint_loaded is written;
    the checkpoint.load point names the iteration."""
    result = judge(looping_run(tmp_path, failed=3, loaded=False))
    assert result.status == "fail"
    assert "attempts 2-4 each tried to load iteration 4 and died the same way (crashed at step 4 phase " \
           "checkpoint.load, exit 1)" in result.detail, result.detail
    assert [r["load_finished"] for r in result.evidence["attempts"]] == [False] * 3


def test_identical_failures_each_caused_by_a_landed_fault_are_no_loop(tmp_path):
    result = judge(looping_run(tmp_path, failed=4, faulted=True, signal="SIGKILL", returncode=-9))
    assert result.status == "pass", result.detail
    assert "the longest run of identical failures was 0" in result.detail
    assert all(r["fault_landed"] for r in result.evidence["attempts"])


def test_the_same_resume_point_with_a_different_failure_is_not_the_same_failure(tmp_path):
    result = judge(looping_run(tmp_path, failed=4, stop_steps=(5, 6, 6, 5)))
    assert result.status == "pass", result.detail
    assert "the longest run of identical failures was 2" in result.detail


def test_the_same_place_with_a_different_exit_is_not_the_same_failure(tmp_path):
    run = SyntheticRun(tmp_path)
    run.failed_attempt(1, resume_from=0, stop_step=5)
    run.failed_attempt(2, resume_from=4, stop_step=5)
    run.failed_attempt(3, resume_from=4, stop_step=5, returncode=-11, signal="SIGSEGV")
    run.failed_attempt(4, resume_from=4, stop_step=5)
    run.finish("out_of_restarts")
    result = judge(run)
    assert result.status == "pass" and result.evidence["longest_identical_failures"] == 1, result.detail


def test_the_loop_limit_is_inclusive(tmp_path):
    assert RESTART_LOOP_LIMIT == 2
    at_limit = judge(looping_run(tmp_path / "at", failed=RESTART_LOOP_LIMIT))
    assert at_limit.status == "pass", at_limit.detail
    assert f"the longest run of identical failures was {RESTART_LOOP_LIMIT}" in at_limit.detail
    over = judge(looping_run(tmp_path / "over", failed=RESTART_LOOP_LIMIT + 1))
    assert over.status == "fail" and "attempts 2-4" in over.detail


def test_a_rejected_checkpoint_names_the_iteration_the_job_died_on(tmp_path):
    """no_fallback's shape: each restart rejects iteration 4 and raises, before any probe point."""
    run = SyntheticRun(tmp_path)
    run.failed_attempt(1, resume_from=0, stop_step=5)
    for number in (2, 3, 4):
        rejecting = h.HistoryWriter(h.rank_history_path(tmp_path, number, 0), rank=0, attempt=number)
        rejecting.write(h.CHECKPOINT_REJECTED, iteration=4, path=str(run.checkpoint_dir / "iter_0000004"),
                        reason="__0_0.distcp does not match its committed sha256")
        rejecting.close()
        run.sup(h.ATTEMPT_START, attempt=number, launcher="direct", port=1, processes=[])
        run.sup(h.RANK_EXIT, attempt=number, rank=0, pid=run.pid(number, 0), returncode=1, signal=None)
        run.sup(h.ATTEMPT_END, attempt=number, outcome="crashed")
    run.finish("out_of_restarts")
    result = judge(run)
    assert result.status == "fail"
    assert "attempts 2-4 each tried to load iteration 4 and died the same way (crashed before its first step, " \
           "exit 1)" in result.detail, result.detail


def test_one_attempt_is_a_skip(tmp_path):
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=12, end="complete")
    run.finish()
    result = judge(run)
    assert result.status == "skip" and "no restart" in result.detail
