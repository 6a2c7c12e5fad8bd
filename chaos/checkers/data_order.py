"""Oracle 4: the data order equals the golden's: consumed samples per step (and the batch's data hash
when both sides have one). Always exact, even on GPU: a data position has no rounding error."""

from __future__ import annotations

from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult, exact_compare

NAME = "data_order"
SAMPLES = "consumed samples"
HASH_KEYS = ("data hash", "data_hash")


def check(ctx: CheckContext) -> CheckResult:
    golden_metrics = ctx.golden_metrics or {}
    if not golden_metrics.get(SAMPLES):
        return CheckResult(NAME, "skip", "the golden has no consumed samples per step")
    compared = {"consumed_samples": SAMPLES}
    hash_key = next((k for k in HASH_KEYS if golden_metrics.get(k)), None)
    if hash_key and views.effective_series(ctx.history, "data_hash"):
        compared["data_hash"] = hash_key
    evidence: dict = {"compared": sorted(compared.values())}

    for field, metric in compared.items():
        golden = {s: v for s, v in golden_metrics[metric].items() if 1 <= s <= ctx.train_iters}
        effective = views.effective_metrics(ctx.history)
        actual = {s: rec[field] for s, (_, rec) in effective.items() if rec.get(field) is not None}
        result = exact_compare({metric: golden}, {metric: actual})
        if not result.passed:
            _, step, expected, got = result.first_divergence  # type: ignore[misc]
            attempt = effective.get(step, (None,))[0]
            evidence["first_divergence"] = {"metric": metric, "step": step, "golden": expected, "actual": got,
                                            "attempt": attempt}
            what = "no value" if got is None else f"actual={got!r}"
            return CheckResult(NAME, "fail", f"{metric} differs from the golden at step {step}: golden={expected!r}, "
                                             f"{what} (attempt {attempt})", evidence)
        for attempt in ctx.history.attempts:
            reported = {s: v for s, v in views.attempt_series(attempt, field).items() if s in golden}
            result = exact_compare({metric: {s: golden[s] for s in reported}}, {metric: reported})
            if not result.passed:
                _, step, expected, got = result.first_divergence  # type: ignore[misc]
                evidence["first_divergence"] = {"metric": metric, "step": step, "golden": expected, "actual": got,
                                                "attempt": attempt.index, "superseded": True}
                return CheckResult(NAME, "fail", f"{metric} differs from the golden at step {step} in attempt "
                                                 f"{attempt.index} (a step later recomputed): golden={expected!r}, "
                                                 f"actual={got!r}", evidence)
    return CheckResult(NAME, "pass", f"{' and '.join(evidence['compared'])} equal the golden at every step", evidence)
