"""Checkers on synthetic histories: each passes on a correct run and fails on a run with its matching bug."""

from __future__ import annotations

import json
import shutil

import pytest

from chaos import comparison
from chaos import golden as golden_module
from chaos import history as h
from chaos.checkers import CHECKS, CheckResult, exact_compare, run_check, run_checks, verdict
from synthetic_runs import SyntheticRun, golden_loss, golden_samples, standard_run
from chaos.checkers.views import iteration_dir_name
from chaos.plan import RestartPolicy
from chaos.scenario.model import CHECK_NAMES


def one(run: SyntheticRun, name: str, **overrides) -> CheckResult:
    return run_check(run.context(**overrides), name)


def killed_then_resumed(tmp_path, resume_from=8, last_step=9, **second) -> SyntheticRun:
    """Attempt 1 is killed in step last_step + 1; attempt 2 resumes from `resume_from` and completes."""
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=last_step + 1, phase="backward", ranks=(1,))
    run.attempt(1, resume_from=0, last_step=last_step, end="killed", fault=kill)
    run.attempt(2, resume_from=resume_from, last_step=12, end="complete", **second)
    run.finish()
    return run


# ---- the registry and the runner ------------------------------------------------------------------------
def test_registry_names_match_the_scenario_check_names():
    assert tuple(CHECKS) == CHECK_NAMES


def test_a_correct_run_passes_every_check(tmp_path):
    results = run_checks(standard_run(tmp_path).context())
    assert [r.name for r in results] == list(CHECK_NAMES)
    # the standard run pauses no rank, loses no node; its synthetic golden keeps no checkpoint fingerprints
    no_pause = {"stalls": "skip", "node_loss": "skip", "checkpoint_state": "skip"}
    assert {r.name: r.status for r in results} == {name: no_pause.get(name, "pass") for name in CHECK_NAMES}, \
        [r.detail for r in results]
    assert verdict(results) == "pass"


def test_an_exception_inside_a_checker_is_an_error_not_a_crash(tmp_path):
    run = standard_run(tmp_path)

    def broken(golden, actual):
        raise ValueError("boom in compare")

    results = run_checks(run.context(compare=broken))
    trajectory = next(r for r in results if r.name == "trajectory")
    assert trajectory.status == "error"
    assert "ValueError: boom in compare" in trajectory.detail
    assert "Traceback" in trajectory.evidence["traceback"]
    assert len(results) == len(CHECK_NAMES)  # the others still ran
    assert verdict(results) == "error"


def test_unknown_check_name_is_an_error(tmp_path):
    result = run_checks(standard_run(tmp_path).context(), ["trajectroy"])[0]
    assert result.status == "error" and "unknown check" in result.detail


def test_verdict_precedence():
    def r(status):
        return CheckResult("x", status, "")

    assert verdict([r("pass"), r("skip")]) == "pass"
    assert verdict([r("pass"), r("fail")]) == "fail"
    assert verdict([r("fail"), r("error")]) == "fail"  # a real failure is never "could not decide"
    assert verdict([r("pass"), r("error")]) == "error"
    assert verdict([{"status": "fail"}]) == "fail"
    with pytest.raises(ValueError):
        r("unknown")


def test_exact_compare_has_the_comparison_shape():
    same = exact_compare({"lm loss": {1: 1.0, 2: 2.0}}, {"lm loss": {1: 1.0, 2: 2.0, 3: 9.0}})
    assert same.passed and same.first_divergence is None and same.detail
    differ = exact_compare({"lm loss": {1: 1.0, 2: 2.0}}, {"lm loss": {1: 1.0, 2: 2.0000001}})
    assert not differ.passed and differ.first_divergence == ("lm loss", 2, 2.0, 2.0000001)
    missing = exact_compare({"lm loss": {1: 1.0, 2: 2.0}}, {"lm loss": {1: 1.0}})
    assert missing.first_divergence == ("lm loss", 2, 2.0, None)


# ---- 1. trajectory -------------------------------------------------------------------------------------------
def test_trajectory_fails_at_the_diverging_step_and_names_the_attempt(tmp_path):
    run = killed_then_resumed(tmp_path, resume_from=4, last_step=6,
                              loss=lambda s: golden_loss(s) + (1e-3 if s >= 7 else 0.0))
    result = one(run, "trajectory")
    assert result.status == "fail"
    assert "step 7" in result.detail and "attempt 2" in result.detail
    assert result.evidence["first_divergence"]["step"] == 7
    assert result.evidence["first_divergence"]["golden"] == golden_loss(7)


def test_trajectory_checks_lost_and_recomputed_steps_too(tmp_path):
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=7, phase="backward", ranks=(1,))
    run.attempt(1, resume_from=0, last_step=6, end="killed", fault=kill,
                loss=lambda s: golden_loss(s) + (0.5 if s == 6 else 0.0))
    run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    result = one(run, "trajectory")
    assert result.status == "fail"
    assert "step 6 in attempt 1" in result.detail
    assert result.evidence["first_divergence"]["superseded"] is True


def test_trajectory_fails_when_steps_are_missing(tmp_path):
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=10, end="preempted")
    run.finish("out_of_restarts")
    result = one(run, "trajectory")
    assert result.status == "fail" and "step 11" in result.detail


def test_trajectory_without_a_golden_is_undecided_not_a_pass(tmp_path):
    result = one(standard_run(tmp_path), "trajectory", golden_metrics=None)
    assert result.status == "error" and "not checked" in result.detail


@pytest.mark.parametrize("steps,why", [(range(1, 2), "ends at step 1"), (range(1, 12), "ends at step 11"),
                                       (range(3, 13), "starts at step 3")])
def test_trajectory_against_a_golden_that_does_not_cover_the_run_is_undecided(tmp_path, steps, why):
    run = standard_run(tmp_path)
    golden = {"lm loss": {s: golden_loss(s) for s in steps}}
    result = one(run, "trajectory", golden_metrics=golden)
    assert result.status == "error" and why in result.detail, result.detail


def test_trajectory_reads_a_golden_at_its_own_interval_and_notes_steps_beyond_the_run(tmp_path):
    run = standard_run(tmp_path)
    every_fifth = {"lm loss": {s: golden_loss(s) for s in (1, 6, 11, 16)}}
    result = one(run, "trajectory", golden_metrics=every_fifth)
    assert result.status == "pass" and result.evidence["golden_steps_beyond_the_run"] == [16, 16]


def test_trajectory_uses_the_injected_golden_comparison(tmp_path):
    run = killed_then_resumed(tmp_path, resume_from=4, last_step=6,
                              loss=lambda s: golden_loss(s) * (1 + 1e-4) if s == 9 else golden_loss(s))

    def comparing(mode):
        return lambda expected, actual: comparison.compare(golden_module.Golden(metrics=dict(expected)), actual, mode)

    exact = one(run, "trajectory", compare=comparing("exact"))
    assert exact.status == "fail" and "step 9" in exact.detail
    assert "mismatch at step 9" in exact.evidence["comparison"]
    tolerant = one(run, "trajectory", compare=comparing("megatron"))
    assert tolerant.status == "pass" and "Megatron relative tolerance" in tolerant.detail


# ---- 2. resume_point ---------------------------------------------------------------------------------------
def test_resume_point_fails_when_resuming_from_an_older_checkpoint(tmp_path):
    run = killed_then_resumed(tmp_path, resume_from=4, last_step=9)
    result = one(run, "resume_point")
    assert result.status == "fail"
    assert "resumed from iteration 4, expected 8" in result.detail
    row = result.evidence["attempts"][0]
    assert (row["attempt"], row["expected_iteration"], row["loaded_iteration"]) == (2, 8, 4)


def test_resume_point_fails_on_a_partial_checkpoint(tmp_path):
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=12, phase="checkpoint.shard", index=1, ranks=(1,))
    run.attempt(1, resume_from=0, last_step=11, end="killed", fault=kill)
    partial = run.write_checkpoint(12, committed=False)  # shards written, never committed
    run.attempt(2, resume_from=12, last_step=12, end="complete", loaded_path=str(partial))
    run.finish()
    result = one(run, "resume_point")
    assert result.status == "fail"
    assert "iter_0000012" in result.detail and "no earlier attempt committed" in result.detail


def test_resume_point_fails_when_a_step_is_skipped_on_resume(tmp_path):
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=10, phase="backward", ranks=(1,))
    run.attempt(1, resume_from=0, last_step=9, end="killed", fault=kill)
    # the right directory (iter 8), the wrong iteration (9): a step silently skipped
    run.attempt(2, resume_from=9, last_step=12, end="complete",
                loaded_path=str(run.checkpoint_dir / iteration_dir_name(8)))
    run.finish()
    result = one(run, "resume_point")
    assert result.status == "fail" and "loaded iter_0000008 but resumed at iteration 9" in result.detail


def corrupt_run(tmp_path, saves=None, resume_from: int = 4) -> SyntheticRun:
    """The corrupt scenario: iteration 6 is damaged during step 7, rank 0 is killed; the restart must fall
    back to iteration 4 (and, unless `saves` says otherwise, saves iteration 6 again). `resume_from=6`
    makes a trainer that loads the damaged checkpoint anyway."""
    run = SyntheticRun(tmp_path, save_interval=2)
    flip = run.fault("f1", step=7, phase="forward", ranks=(0,), corrupt="flip")
    kill = run.fault("f2", step=7, phase="backward", ranks=(0,))
    run.attempt(1, resume_from=0, last_step=6, end="killed", fault=kill)
    run.corrupt(flip, 6)
    run.attempt(2, resume_from=resume_from, last_step=12, end="complete", saves=saves)
    run.finish()
    return run


def test_resume_point_and_friends_accept_falling_back_past_a_corrupted_checkpoint(tmp_path):
    run = corrupt_run(tmp_path, saves={8, 10, 12})
    results = {r.name: r for r in run_checks(run.context())}
    assert {n: r.status for n, r in results.items()} == \
        {n: "skip" if n in ("stalls", "node_loss", "checkpoint_state") else "pass" for n in CHECK_NAMES}, \
        {n: r.detail for n, r in results.items()}
    assert results["resume_point"].evidence["attempts"][0]["excluded_corrupted"] == [6]
    assert "expected-damaged" in results["checkpoints_load"].detail
    assert "6" in results["checkpoints_load"].evidence["expected_damaged"]


def test_a_recommitted_corrupted_iteration_must_be_intact_again(tmp_path):
    run = corrupt_run(tmp_path)  # attempt 2 saves iteration 6 again, over the damaged directory
    result = one(run, "checkpoints_load")
    assert result.status == "pass" and 6 in result.evidence["intact"] and not result.evidence["expected_damaged"]
    shard = run.checkpoint_dir / iteration_dir_name(6) / "__0_0.distcp"
    shard.write_bytes(b"Z" + shard.read_bytes()[1:])
    result = one(run, "checkpoints_load")
    assert result.status == "fail" and "iter_0000006" in result.detail
    assert one(run, "resume_point").status == "pass"


def test_resume_point_fails_when_loading_the_corrupted_checkpoint(tmp_path):
    run = corrupt_run(tmp_path, resume_from=6)
    result = one(run, "resume_point")
    assert result.status == "fail" and "corrupted" in result.detail


def test_resume_point_fails_when_an_intact_checkpoint_is_rejected(tmp_path):
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=10, phase="backward", ranks=(1,))
    run.attempt(1, resume_from=0, last_step=9, end="killed", fault=kill)
    rejecting = h.HistoryWriter(h.rank_history_path(tmp_path, 2, 0), rank=0, attempt=2)
    rejecting.write(h.CHECKPOINT_REJECTED, iteration=8, path=str(run.checkpoint_dir / iteration_dir_name(8)),
                    reason="made up")
    rejecting.close()
    run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    result = one(run, "resume_point")
    assert result.status == "fail" and "rejected iteration 8" in result.detail


# ---- 3. steps_lost ---------------------------------------------------------------------------------------
def test_steps_lost_fails_beyond_the_save_interval(tmp_path):
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=12, phase="forward", ranks=(1,))
    run.attempt(1, resume_from=0, last_step=11, end="killed", fault=kill, saves={4})  # the trainer skipped save 8
    run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    result = one(run, "steps_lost")
    assert result.status == "fail"
    assert "f1: 7 step(s) lost" in result.detail and "save_interval=4" in result.detail
    assert result.evidence["faults"][0]["steps_lost"] == 7


def test_steps_lost_allows_the_steps_run_while_an_async_save_was_in_flight(tmp_path):
    """An async save commits when it is finalized, steps after it began. A kill while the iteration-8 save is
    still being written (after step 9) resumes from 4: 5 steps lost, 4 for the interval and 1 of lag; seen
    on a GPU (11 lost at save_interval 10). Without the in-flight save the same loss fails."""
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=8, phase="checkpoint.metadata", ranks=(0,))
    run.attempt(1, resume_from=0, last_step=9, end="killed", fault=kill, saves={4}, open_saves={8})
    run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    result = one(run, "steps_lost")
    assert result.status == "pass", result.detail
    row = result.evidence["faults"][0]
    assert row["steps_lost"] == 5 and row["allowed"] == 5
    assert row["save_in_flight"] == {"iteration": 8, "steps_since_it_began": 1}


def test_steps_lost_still_fails_a_trainer_that_never_finalizes_its_async_saves(tmp_path):
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=8, phase="checkpoint.metadata", ranks=(0,))
    run.attempt(1, resume_from=0, last_step=9, end="killed", fault=kill, saves=set(), open_saves={4, 8})
    run.attempt(2, resume_from=0, last_step=12, end="complete")
    run.finish()
    result = one(run, "steps_lost")
    assert result.status == "fail"
    assert "9 step(s) lost" in result.detail and "at most 5 allowed" in result.detail
    assert "1 step(s) run while the save of iteration 8 was in flight" in result.detail


def test_steps_lost_must_be_zero_for_a_graceful_sigterm(tmp_path):
    run = SyntheticRun(tmp_path)
    term = run.fault("f1", step=10, phase="forward", ranks=(0, 1), signal="SIGTERM")
    run.attempt(1, resume_from=0, last_step=10, end="preempted", fault=term, saves={4, 8})  # no save on exit
    run.attempt(2, resume_from=8, last_step=12, end="complete")
    run.finish()
    result = one(run, "steps_lost")
    assert result.status == "fail" and "graceful SIGTERM must lose none" in result.detail
    assert result.evidence["faults"][0]["steps_lost"] == 2


def test_steps_lost_fails_when_sigterm_is_ignored(tmp_path):
    run = SyntheticRun(tmp_path)
    term = run.fault("f1", step=10, phase="forward", ranks=(0, 1), signal="SIGTERM")
    run.attempt(1, resume_from=0, last_step=12, end="complete", fault=term)
    run.finish()
    result = one(run, "steps_lost")
    assert result.status == "fail" and "did not stop it" in result.detail


def test_steps_lost_fails_when_steps_are_skipped(tmp_path):
    run = killed_then_resumed(tmp_path, resume_from=9, last_step=8,
                              loaded_path=None)
    result = one(run, "steps_lost")
    assert result.status == "fail" and "1 step(s) skipped" in result.detail


# ---- 10. stalls -------------------------------------------------------------------------------------------
def rank0_gives_up(run: SyntheticRun, **fields):
    """While rank 1 is stalled, rank 0 exits 1 (a watchdog or timeout of the job's) and the stall ends with the
    attempt."""
    def gave_up():
        run.sup(h.RANK_EXIT, attempt=1, rank=0, pid=run.pid(1, 0), returncode=1, signal=None)
        run.sup(h.STALL_ENDED, fault_id="f1", attempt=1, ranks=[1], by="attempt_end", **fields)
    return gave_up


def paused_run(tmp_path, pause_s: float, ridden_out: bool) -> SyntheticRun:
    """Rank 1 paused for pause_s after step 5; ridden out (SIGCONT, then the job goes on to complete) or not
    (rank 0 gives up during the pause and the attempt is torn down as hung; attempt 2 resumes)."""
    run = SyntheticRun(tmp_path)
    pause = run.fault("f1", step=5, phase="forward", ranks=(1,), pause_s=pause_s)
    if ridden_out:
        ended = lambda: run.sup(h.STALL_ENDED, fault_id="f1", attempt=1, kind="pause", ranks=[1],
                                resumed=[run.pid(1, 1)], stalled_s=pause_s, by="elapsed")
        run.attempt(1, resume_from=0, last_step=12, end="complete", fault=pause, after_land=ended)
    else:
        gave_up = rank0_gives_up(run, kind="pause", resumed=[], stalled_s=2.5)
        run.attempt(1, resume_from=0, last_step=4, end="hung", fault=pause, after_land=gave_up)
        run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    return run


def test_stalls_passes_when_the_job_rides_out_a_short_pause(tmp_path):
    result = one(paused_run(tmp_path, pause_s=3.0, ridden_out=True), "stalls")
    assert result.status == "pass", result.detail
    row = result.evidence["stalls"][0]
    assert row["ended_by"] == "elapsed" and row["progress_after_stall"] is True and row["ranks"] == [1]


def test_stalls_fails_when_the_job_dies_during_a_pause_shorter_than_the_hang_timeout(tmp_path):
    result = one(paused_run(tmp_path, pause_s=3.0, ridden_out=False), "stalls")
    assert result.status == "fail"
    assert "attempt ended during a 3s pause of rank(s) [1] in attempt 1 (hang_timeout_s=10)" in result.detail
    assert "rank 0 exited 1" in result.detail


def test_stalls_leaves_a_pause_longer_than_the_hang_timeout_to_hang_detection(tmp_path):
    result = one(paused_run(tmp_path, pause_s=30.0, ridden_out=False), "stalls")
    assert result.status == "pass" and "1 pause(s) or partition(s) longer than the hang timeout left to hang detection" in result.detail
    assert "hang detection" in result.evidence["stalls"][0]["expected"]


def straggled_run(tmp_path, survived: bool) -> SyntheticRun:
    """Rank 1 gets 0.1 CPU for 20 s from step 5: the job goes on at its pace (steps take 2 s instead of 0.1),
    or, with a watchdog tighter than the slowed steps, rank 0 gives up while it holds."""
    run = SyntheticRun(tmp_path)
    slow = run.fault("f1", step=5, phase="forward", ranks=(1,), straggler=(0.1, 20.0))
    if survived:
        def go_on():
            for step in (5, 6):
                for rank in (0, 1):
                    path = h.rank_history_path(run.run_dir, 1, rank)
                    with open(path, "a") as handle:
                        begin = run.tick(0.0)
                        handle.write(json.dumps({"t": begin, "mono": begin, "event": h.STEP_BEGIN, "rank": rank,
                                                 "attempt": 1, "step": step}) + "\n")
                        end = run.tick(2.0)
                        handle.write(json.dumps({"t": end, "mono": end, "event": h.STEP_END, "rank": rank,
                                                 "attempt": 1, "step": step}) + "\n")
            run.sup(h.STALL_ENDED, fault_id="f1", attempt=1, kind="straggler", ranks=[1], released=[run.pid(1, 1)],
                    stalled_s=20.0, by="elapsed")
        run.attempt(1, resume_from=0, last_step=4, end="complete", fault=slow, after_land=go_on)
    else:
        gave_up = rank0_gives_up(run, kind="straggler", released=[], stalled_s=4.1)
        run.attempt(1, resume_from=0, last_step=4, end="killed", fault=slow, after_land=gave_up)
        run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    return run


def test_stalls_passes_a_straggler_ridden_out_and_shows_its_step_time(tmp_path):
    result = one(straggled_run(tmp_path, survived=True), "stalls")
    assert result.status == "pass", result.detail
    row = result.evidence["stalls"][0]
    assert row["kind"] == "straggler" and row["ended_by"] == "elapsed" and row["progress_after_stall"] is True
    assert row["step_time_during_s"] == 2.0 and row["step_time_before_s"] < row["step_time_during_s"]
    assert "f1 step time" in result.detail


def test_stalls_fails_when_the_job_gives_up_on_a_straggler(tmp_path):
    result = one(straggled_run(tmp_path, survived=False), "stalls")
    assert result.status == "fail"
    assert "attempt ended during a straggler (0.1 CPU for 20s) on rank(s) [1] in attempt 1" in result.detail
    assert "rank 0 exited 1" in result.detail


def test_stalls_skips_without_a_pause(tmp_path):
    assert one(standard_run(tmp_path), "stalls").status == "skip"


# ---- 4. data_order -------------------------------------------------------------------------------------------
def test_data_order_fails_when_the_data_position_is_lost(tmp_path):
    run = killed_then_resumed(tmp_path, resume_from=4, last_step=6,
                              samples=lambda s: golden_samples(s - 4))  # consumed samples restart from 0
    result = one(run, "data_order")
    assert result.status == "fail"
    assert "step 5" in result.detail and "attempt 2" in result.detail
    assert one(run, "data_order", golden_metrics={"lm loss": {1: 1.0}}).status == "skip"


def test_data_order_compares_data_hashes_when_both_sides_have_them(tmp_path):
    run = standard_run(tmp_path)
    history_file = h.rank_history_path(tmp_path, 3, 0)
    lines = history_file.read_text().splitlines()
    patched = []
    for line in lines:
        record = json.loads(line)
        if record["event"] == h.METRICS:
            record["data_hash"] = "bad" if record["step"] == 12 else f"h{record['step']}"
        patched.append(json.dumps(record))
    history_file.write_text("\n".join(patched) + "\n")
    result = one(run, "data_order", golden_data_hashes={s: f"h{s}" for s in range(11, 13)})
    assert result.status == "fail" and "data hash" in result.detail and "step 12" in result.detail


def test_data_order_says_when_it_compared_consumed_samples_only(tmp_path):
    result = one(standard_run(tmp_path), "data_order")
    assert result.status == "pass" and "consumed samples only: the golden recorded no data hashes" in result.detail
    assert result.evidence["compared"] == ["consumed samples"]


# ---- 5. final_state --------------------------------------------------------------------------------------
def test_final_state_fails_on_a_different_hash(tmp_path):
    run = killed_then_resumed(tmp_path, final_hash="cd" * 32)
    result = one(run, "final_state")
    assert result.status == "fail" and "differs from the golden" in result.detail


def test_final_state_fails_when_the_run_never_finished_and_skips_without_golden(tmp_path):
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=8, end="preempted")
    run.finish("interrupted")
    assert one(run, "final_state").status == "fail"
    assert "never reached the end" in one(run, "final_state").detail
    assert one(run, "final_state", golden_final_state_hash=None).status == "skip"


# ---- 6. checkpoints_load -------------------------------------------------------------------------------
def test_checkpoints_load_fails_on_silent_damage(tmp_path):
    run = standard_run(tmp_path)
    shard = run.checkpoint_dir / iteration_dir_name(8) / "__1_0.distcp"
    shard.write_bytes(b"X" + shard.read_bytes()[1:])
    (run.checkpoint_dir / iteration_dir_name(4) / ".metadata").unlink()
    result = one(run, "checkpoints_load")
    assert result.status == "fail"
    assert "iter_0000008: __1_0.distcp does not match its committed sha256" in result.detail
    assert "iter_0000004: .metadata is missing" in result.detail


def test_checkpoints_load_allows_keep_last_retention_only_when_configured(tmp_path):
    kept = SyntheticRun(tmp_path / "kept", keep_last=2)
    kept.attempt(1, resume_from=0, last_step=12, end="complete")
    kept.finish()
    shutil.rmtree(kept.checkpoint_dir / iteration_dir_name(4))
    result = one(kept, "checkpoints_load")
    assert result.status == "pass" and result.evidence["retired_by_keep_last"] == [4]

    unkept = SyntheticRun(tmp_path / "unkept")
    unkept.attempt(1, resume_from=0, last_step=12, end="complete")
    unkept.finish()
    shutil.rmtree(unkept.checkpoint_dir / iteration_dir_name(4))
    result = one(unkept, "checkpoints_load")
    assert result.status == "fail" and "iter_0000004 does not exist" in result.detail


def test_checkpoints_load_fails_when_the_tracker_names_a_partial_checkpoint(tmp_path):
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=12, phase="checkpoint.shard", index=1, ranks=(1,))
    run.attempt(1, resume_from=0, last_step=11, end="killed", fault=kill)
    run.write_checkpoint(12, committed=False)
    (run.checkpoint_dir / "latest_checkpointed_iteration.txt").write_text("12")  # tracker before shards
    run.finish("out_of_restarts")
    result = one(run, "checkpoints_load")
    assert result.status == "fail"
    assert "iter_0000012: no chaos_manifest.json" in result.detail
    assert "tracker names iteration 12" in result.detail


# ---- 7. faults_landed ------------------------------------------------------------------------------------
def test_a_planned_fault_that_never_landed_makes_the_verdict_error(tmp_path):
    run = standard_run(tmp_path)
    run.fault("f3", step=11, phase="forward", ranks=(0,), attempt=3)  # planned, never delivered
    (tmp_path / "plan.json").unlink()
    results = run_checks(run.context())
    landed = next(r for r in results if r.name == "faults_landed")
    assert landed.status == "error" and "f3 never landed" in landed.detail
    assert verdict(results) == "error"


def test_a_missed_fault_is_an_error(tmp_path):
    run = SyntheticRun(tmp_path)
    run.fault("f1", step=20, phase="forward", ranks=(0,))
    run.attempt(1, resume_from=0, last_step=12, end="complete")
    run.sup(h.FAULT_MISSED, fault_id="f1", reason="step 20 is never reached (train_iters=12)")
    run.finish()
    result = one(run, "faults_landed")
    assert result.status == "error" and "f1 missed: step 20 is never reached" in result.detail


def test_a_fault_landed_elsewhere_is_an_error(tmp_path):
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=7, phase="backward", ranks=(1,))
    run.attempt(1, resume_from=0, last_step=6, end="killed", fault=kill, land={"step": 8, "phase": "forward"})
    run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    result = one(run, "faults_landed")
    assert result.status == "error"
    assert "step 8, planned 7" in result.detail and "phase forward, planned backward" in result.detail


def test_faults_landed_skips_without_a_plan(tmp_path):
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=12, end="complete")
    run.finish()
    assert one(run, "faults_landed").status == "skip"


# ---- 8. no_survivors -------------------------------------------------------------------------------------
def test_no_survivors_fails_on_a_survivor(tmp_path):
    run = killed_then_resumed(tmp_path, resume_from=8, last_step=9)
    run2 = SyntheticRun(tmp_path / "survivor")
    kill = run2.fault("f1", step=10, phase="backward", ranks=(1,))
    run2.attempt(1, resume_from=0, last_step=9, end="killed", fault=kill, teardown_survivors=(4242,))
    run2.attempt(2, resume_from=8, last_step=12, end="complete")
    run2.finish()
    assert one(run, "no_survivors").status == "pass"
    result = one(run2, "no_survivors")
    assert result.status == "fail" and "4242" in result.detail


def lost_host_run(tmp_path, later_agent_swept: list[dict] | None) -> SyntheticRun:
    """hosts: cluster: node 1's agent lost at attempt 1's teardown; None: no later agent ran on its host."""
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=12, end="complete")
    run.sup(h.TEARDOWN, attempt=1, duration_s=0.1, sigterm=[], sigkill=[], survivors=[], leaked=[],
            hosts=[{"node": 0, "host": "n0", "survivors": []}, {"node": 1, "host": "n1", "lost": "no answer in 30 s"}])
    if later_agent_swept is not None:
        run.sup(h.AGENT_HELLO, attempt=2, node=1, host="n1", mono_offset_s=0.0, swept=later_agent_swept)
    run.finish()
    return run


def test_no_survivors_judges_a_host_whose_agent_was_lost_by_the_next_agent_there(tmp_path):
    """hosts: cluster: each agent tears its own host down. One lost at teardown leaves its host unverified
    (unknown, not pass) until a later attempt's agent there sweeps it: clean passes, a find fails."""
    unknown = one(lost_host_run(tmp_path / "unknown", None), "no_survivors")
    assert unknown.status == "error"
    assert ("node 1's agent (n1) was lost at teardown (no answer in 30 s) and no later agent ran there: nothing on "
            "that host could be verified gone") in unknown.detail
    assert one(lost_host_run(tmp_path / "clean", []), "no_survivors").status == "pass"
    found = one(lost_host_run(tmp_path / "found", [{"pid": 99, "command": "python train.py"}]), "no_survivors")
    assert found.status == "fail"
    assert ("attempt 2: the agent on n1 found process 99 (python train.py) of an earlier attempt still running there "
            "before it started anything (killed)") in found.detail


def test_no_survivors_fails_on_a_process_never_seen_to_exit(tmp_path):
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=12, end="complete")
    run.sup(h.ATTEMPT_START, attempt=1, launcher="direct", port=1, processes=[{"pid": 777, "role": "rank 9"}])
    run.finish()
    result = one(run, "no_survivors")
    assert result.status == "fail" and "process 777 neither exited nor was torn down" in result.detail


def hang_run(tmp_path, hang_after_s: float | None) -> SyntheticRun:
    run = SyntheticRun(tmp_path, restart=RestartPolicy(max_restarts=2, hang_timeout_s=10.0))
    stop = run.fault("f1", step=5, phase="forward", ranks=(1,), signal="SIGSTOP")
    run.attempt(1, resume_from=0, last_step=4, end="hung", fault=stop, hang_after_s=hang_after_s)
    run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    return run


def test_a_hang_detected_in_time_passes_and_a_late_one_fails(tmp_path):
    in_time = one(hang_run(tmp_path / "in_time", hang_after_s=11.0), "no_survivors")
    assert in_time.status == "pass", in_time.detail
    assert 10.0 < in_time.evidence["hangs"][0]["detected_after_s"] < 15.0
    late = one(hang_run(tmp_path / "late", hang_after_s=40.0), "no_survivors")
    assert late.status == "fail" and "hang detected 40." in late.detail


def test_a_sigstop_without_hang_detection_fails(tmp_path):
    run = SyntheticRun(tmp_path)
    stop = run.fault("f1", step=5, phase="forward", ranks=(1,), signal="SIGSTOP")
    run.attempt(1, resume_from=0, last_step=4, end="killed", fault=stop)
    run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    result = one(run, "no_survivors")
    assert result.status == "fail" and "no hang was detected" in result.detail


# ---- 9. restart_budget -----------------------------------------------------------------------------------
def test_restart_budget_fails_when_out_of_restarts_or_over_budget(tmp_path):
    run = standard_run(tmp_path)
    over = one(run, "restart_budget", restart=RestartPolicy(max_restarts=1))
    assert over.status == "fail" and "2 restarts exceed max_restarts=1" in over.detail
    stopped = SyntheticRun(tmp_path / "stopped")
    kill = stopped.fault("f1", step=6, phase="forward", ranks=(0,))
    stopped.attempt(1, resume_from=0, last_step=5, end="killed", fault=kill)
    stopped.finish("out_of_restarts")
    result = one(stopped, "restart_budget")
    assert result.status == "fail" and "out_of_restarts" in result.detail


def test_the_default_comparison_is_the_bitwise_rule_production_uses(tmp_path):
    """A signed zero equals zero under ==, not bitwise: checkers without an explicit comparison (these tests)
    must judge by the rule `chaos run` uses, or they test a weaker oracle than the product has."""
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=12, end="complete", loss=lambda s: -0.0 if s == 5 else golden_loss(s))
    run.finish()
    golden = run.golden_metrics()
    golden["lm loss"][5] = 0.0
    result = one(run, "trajectory", golden_metrics=golden)
    assert result.status == "fail" and result.evidence["first_divergence"]["step"] == 5, result.detail


# ---- 11. node_loss ----------------------------------------------------------------------------------------
def node_lost_run(tmp_path, lost_iterations=(), resume_from=8, survivors=()) -> SyntheticRun:
    """Two nodes of one rank each; node 1 is lost in step 10 of attempt 1 (its disk held files of
    `lost_iterations`); attempt 2 resumes from `resume_from` and completes."""
    run = SyntheticRun(tmp_path)
    loss = run.fault("f1", step=10, phase="forward", ranks=(1,), node=1)
    lost = lambda: run.sup(h.NODE_LOST, fault_id="f1", attempt=1, node=1, delivered=[run.pid(1, 1)],
                           killed=[run.pid(1, 1), 4242], survivors=list(survivors), files=3 * len(lost_iterations),
                           bytes=100 * len(lost_iterations), listed=[], iterations=list(lost_iterations))
    run.attempt(1, resume_from=0, last_step=9, end="killed", fault=loss, after_land=lost)
    run.attempt(2, resume_from=resume_from, last_step=12, end="complete")
    run.finish()
    return run


def test_node_loss_passes_when_the_job_resumes_from_storage_that_survived_the_node(tmp_path):
    result = one(node_lost_run(tmp_path), "node_loss")
    assert result.status == "pass", result.detail
    row = result.evidence["losses"][0]
    assert row["resumed_attempt"] == 2 and row["resumed_from"] == {0: 8, 1: 8} and 4242 in row["killed"]


def test_node_loss_fails_when_checkpoints_were_on_the_lost_disk_only(tmp_path):
    run = node_lost_run(tmp_path, lost_iterations=(4, 8), resume_from=8)
    result = one(run, "node_loss")
    assert result.status == "fail"
    assert "committed checkpoint(s) [4, 8] had files on node 1's local disk only" in result.detail
    assert "attempt 2 resumed from [8], whose files on node 1's disk were lost" in result.detail
    resume = one(run, "resume_point")  # a checkpoint with lost files is no longer the one to resume from
    assert resume.status == "fail" and "had files on node 1's local disk, lost with the node (f1)" in resume.detail
    assert resume.evidence["attempts"][0]["excluded_lost"] == [4, 8]


def test_node_loss_fails_when_a_process_of_the_node_outlived_it(tmp_path):
    result = one(node_lost_run(tmp_path, survivors=(4243,)), "node_loss")
    assert result.status == "fail" and "processes [4243] of node 1 outlived the node loss" in result.detail


def test_resume_point_expects_the_older_checkpoint_when_the_newest_was_lost_with_a_node(tmp_path):
    """A job that falls back past the lost checkpoint resumed where it should (node_loss still reports the
    loss of a committed checkpoint as a finding about the job)."""
    run = node_lost_run(tmp_path, lost_iterations=(8,), resume_from=4)
    assert one(run, "resume_point").status == "pass"
    assert "[8] had files on node 1's local disk only" in one(run, "node_loss").detail
