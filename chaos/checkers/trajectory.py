"""Oracle 1: the effective loss trajectory equals the golden at every step, and so does every value any
attempt reported (a step computed, lost to a fault and recomputed must have been right both times)."""

from __future__ import annotations

from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult, describe

NAME = "trajectory"
METRIC = "lm loss"


def check(ctx: CheckContext) -> CheckResult:
    golden = (ctx.golden_metrics or {}).get(METRIC)
    if not golden:
        return CheckResult(NAME, "skip", "no golden lm loss to compare with")
    golden = {step: value for step, value in golden.items() if 1 <= step <= ctx.train_iters}
    effective = views.effective_metrics(ctx.history)
    actual = {step: rec["lm_loss"] for step, (_, rec) in effective.items() if rec.get("lm_loss") is not None}
    evidence: dict = {"steps_compared": len(golden), "effective_steps": len(actual)}

    comparison = ctx.comparison({METRIC: golden}, {METRIC: actual})
    divergence = comparison.first_divergence
    evidence["comparison"] = describe(comparison)
    if divergence is not None:
        _, step, expected, got = divergence
        source = effective.get(step, (None, None))[0]
        evidence["first_divergence"] = {"step": step, "golden": expected, "actual": got, "attempt": source}
    if not comparison.passed:
        _, step, expected, got = divergence  # type: ignore[misc]
        if got is None:
            detail = f"no attempt reported lm loss for step {step} (golden={expected!r})"
        else:
            detail = (f"lm loss diverges from the golden at step {step}: golden={expected!r}, actual={got!r} "
                      f"(attempt {evidence['first_divergence']['attempt']})")
        return CheckResult(NAME, "fail", detail, evidence)

    superseded = views.superseded_divergence(ctx.history, "lm_loss", METRIC, golden, ctx.comparison)
    if superseded is not None:
        attempt, step, expected, got = superseded
        evidence["first_divergence"] = {"step": step, "golden": expected, "actual": got,
                                        "attempt": attempt, "superseded": True}
        return CheckResult(NAME, "fail",
                           f"lm loss diverges from the golden at step {step} in attempt {attempt} "
                           f"(a step later recomputed): golden={expected!r}, actual={got!r}",
                           evidence)
    note = ""
    if divergence is not None:
        note = f" (first difference at step {divergence[1]}, within the comparison's allowance)"
    rule = f"; {evidence['comparison']}" if evidence["comparison"] else ""
    return CheckResult(NAME, "pass", f"lm loss matches the golden at all {len(golden)} steps{note}{rule}", evidence)

