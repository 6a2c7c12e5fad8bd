"""Oracle 4: the data order equals the golden's: consumed samples per step, and the batch's data hash when
the golden recorded them (CheckContext.golden_data_hashes) and the run reports them. Always exact, even on
GPU: a data position has no rounding error."""

from __future__ import annotations

from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult, exact_compare

NAME = "data_order"
SAMPLES = "consumed samples"
HASH = "data hash"


def check(ctx: CheckContext) -> CheckResult:
    golden_samples = (ctx.golden_metrics or {}).get(SAMPLES)
    if not golden_samples:
        return CheckResult(NAME, "skip", "the golden has no consumed samples per step")
    effective = views.effective_metrics(ctx.history)
    # probe field -> (golden metric name, golden step -> value)
    compared = {"consumed_samples": (SAMPLES, golden_samples)}
    # Say which side lacks data hashes, so a pass never claims a comparison that was not made.
    hashes_missing = None
    if not ctx.golden_data_hashes:
        hashes_missing = "the golden recorded no data hashes"
    elif not any(rec.get("data_hash") is not None for _, rec in effective.values()):
        hashes_missing = "the run reported no data hashes"
    else:
        compared["data_hash"] = (HASH, dict(ctx.golden_data_hashes))
    evidence: dict = {"compared": [metric for metric, _ in compared.values()]}
    if hashes_missing:
        evidence["data_hash_not_compared"] = hashes_missing

    for field, (metric, golden_values) in compared.items():
        golden = {s: v for s, v in golden_values.items() if 1 <= s <= ctx.train_iters}
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
        superseded = views.superseded_divergence(ctx.history, field, metric, golden, exact_compare)
        if superseded is not None:
            attempt, step, expected, got = superseded
            evidence["first_divergence"] = {"metric": metric, "step": step, "golden": expected, "actual": got,
                                            "attempt": attempt, "superseded": True}
            return CheckResult(NAME, "fail", f"{metric} differs from the golden at step {step} in attempt "
                                             f"{attempt} (a step later recomputed): golden={expected!r}, "
                                             f"actual={got!r}", evidence)
    only = f" ({SAMPLES} only: {hashes_missing})" if hashes_missing else ""
    return CheckResult(NAME, "pass", f"{' and '.join(evidence['compared'])} equal the golden at every step{only}",
                       evidence)
