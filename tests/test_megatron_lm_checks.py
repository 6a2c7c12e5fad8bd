"""The checks on what an unmodified Megatron-LM prints, on synthetic histories (logic, not processes):
printed values compare as printed, Megatron's two-iteration mean after each start compares with the golden's
mean over the same iterations (and fails when it is off), and an observed landing whose window had closed
makes faults_landed an error."""

from __future__ import annotations

from pathlib import Path

from chaos import comparison
from chaos import golden as golden_module
from chaos import history as h
from chaos.checkers import CheckContext, run_check
from chaos.history import HistoryWriter, load_run_history
from chaos.faults.signals import Signal
from chaos.plan import PlannedFault, RestartPolicy, Target, Trigger
from chaos.workloads.base import WorkloadFacts

PRINTED = {"lm loss": "%.6E"}
TRUE_LOSS = {s: 10.9 - 0.013 * s + 0.00017 * s * s for s in range(1, 9)}


def printed(value: float) -> float:
    return float("%.6E" % value)


def write_attempt(run_dir: Path, attempt: int, steps: list[int], window_at: int | None, loss=TRUE_LOSS) -> None:
    """One process of the trainer as the follower records it: every step logged on rank 0, the second one
    as Megatron's mean of the first two (when window_at says so)."""
    writer = HistoryWriter(h.rank_history_path(run_dir, attempt, 0), rank=0, attempt=attempt, observed=True)
    writer.write(h.CHECKPOINT_LOADED, iteration=steps[0] - 1, path=None)
    for step in steps:
        record = {"step": step, "consumed_samples": 8 * step}
        if step == window_at:
            record.update(lm_loss=printed((loss[step - 1] + loss[step]) / 2), loss_window=[step - 1, step])
        else:
            record["lm_loss"] = printed(loss[step])
        writer.write(h.METRICS, **record)
    writer.close()


def context(run_dir: Path, golden: golden_module.Golden, mode: str = "exact", plan=()) -> CheckContext:
    def compare(expected, actual):
        return comparison.compare(golden_module.Golden(metrics=expected), actual, mode,
                                     printed_formats=PRINTED)

    return CheckContext(run_dir=run_dir, history=load_run_history(run_dir), plan=tuple(plan),
                        golden_metrics=golden.metrics, golden_final_state_hash=None, compare=compare, train_iters=8,
                        save_interval=2, restart=RestartPolicy(), checkpoint_dir=run_dir / "checkpoints",
                        facts=WorkloadFacts(1, 1, 8, 2, True, "cuda"), golden_loss_windows=golden.loss_windows,
                        printed_formats=PRINTED, comparison_mode=mode)


def golden_from_log() -> golden_module.Golden:
    """An uninterrupted run recorded from the log: step 2 is printed as the mean of 1 and 2."""
    values = {s: printed(v) for s, v in TRUE_LOSS.items()}
    values[2] = printed((TRUE_LOSS[1] + TRUE_LOSS[2]) / 2)
    return golden_module.Golden(metrics={"lm loss": values}, loss_windows={2: (1, 2)})


def test_megatron_lm_printed_means_after_a_restart_match_the_golden_mean(tmp_path):
    write_attempt(tmp_path, 1, [1, 2, 3, 4, 5], window_at=2)
    write_attempt(tmp_path, 2, [5, 6, 7, 8], window_at=6)  # resumed from 4: prints 6 as mean(5, 6)
    result = run_check(context(tmp_path, golden_from_log()), "trajectory")
    assert result.status == "pass", result.detail
    assert [w["step"] for w in result.evidence["loss_windows"]] == [6]


def test_megatron_lm_a_printed_mean_that_is_off_fails_trajectory(tmp_path):
    wrong = dict(TRUE_LOSS)
    wrong[6] = TRUE_LOSS[6] + 0.001  # the resumed process computed another loss at step 6
    write_attempt(tmp_path, 1, [1, 2, 3, 4, 5], window_at=2)
    write_attempt(tmp_path, 2, [5, 6, 7, 8], window_at=6, loss={**TRUE_LOSS, 6: wrong[6]})
    result = run_check(context(tmp_path, golden_from_log()), "trajectory")
    assert result.status == "fail" and "step 6" in result.detail and "mean over steps [5, 6]" in result.detail


def test_megatron_lm_golden_mean_is_unfolded_when_a_restart_logs_that_step_plainly(tmp_path):
    write_attempt(tmp_path, 1, [1], window_at=None)
    write_attempt(tmp_path, 2, [2, 3, 4, 5, 6, 7, 8], window_at=3)  # resumed from 1: 2 plain, 3 = mean(2, 3)
    result = run_check(context(tmp_path, golden_from_log()), "trajectory")
    assert result.status == "pass", result.detail
    assert {w["step"] for w in result.evidence["loss_windows"]} == {2, 3}


def test_megatron_lm_full_precision_golden_compares_as_printed():
    """Megatron's own golden files hold unrounded values; the run printed 7 significant digits."""
    golden = golden_module.Golden(metrics={"lm loss": {1: 10.926051234, 2: 10.920971}})
    actual = {"lm loss": {1: 10.92605, 2: 10.92097}}
    assert comparison.compare(golden, actual, "exact", printed_formats=PRINTED).passed
    assert not comparison.compare(golden, actual, "exact").passed  # bitwise would call it a divergence
    assert not comparison.compare(golden, {"lm loss": {1: 10.92606, 2: 10.92097}}, "exact",
                                  printed_formats=PRINTED).passed


def test_megatron_lm_landing_after_its_window_closed_is_an_error(tmp_path):
    fault = PlannedFault("f1", Trigger(step=5, phase="iteration", delay_s=1.0), Target("rank", (0,)),
                         Signal("SIGKILL"))
    supervisor = HistoryWriter(h.supervisor_history_path(tmp_path))
    observed = {"latency_s": 1.2, "window_open": False, "window": "iteration 6 was already logged"}
    supervisor.write(h.FAULT_LANDED, fault_id="f1", attempt=1, rank=0, step=5, phase="iteration", index=None,
                     action="signal", signal="SIGKILL", held=False, observed=observed)
    supervisor.close()
    result = run_check(context(tmp_path, golden_from_log(), plan=[fault]), "faults_landed")
    assert result.status == "error" and "window closed" in result.detail and "iteration 6" in result.detail
    assert result.evidence["faults"][0]["landed"][0]["landing"] == "observed"
