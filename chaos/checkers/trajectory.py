"""Oracle 1: the effective loss trajectory equals the golden at every step, and so does every value any
attempt reported (a step computed, lost to a fault and recomputed must have been right both times).

Loss windows. Megatron-LM prints the second iteration each process logs as the mean of its first two
(chaos.workloads.megatron_lm.reader); such a record carries `loss_window: [a, b]`, and a golden recorded
from those logs marks its own (chaos.golden.Golden.loss_windows). A value is compared with what the golden
says about the *same* quantity: equal windows (or none) compare as usual (bitwise, as printed, or with
Megatron's tolerances); a window the golden does not share compares with the golden's mean over it, where
a golden window step's own loss is recovered as 2 x mean - the loss before it. Those derived expectations
carry the golden's print rounding, so in exact mode they must agree within two units of the last printed
digit; the evidence lists them.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult, describe

NAME = "trajectory"
METRIC = "lm loss"
PRINT_QUANTA = 2.0
"""Derived expectations (see the module docstring) may differ from a printed value by this many units of its
last printed digit in exact mode."""


def check(ctx: CheckContext) -> CheckResult:
    # Nothing to compare is never a pass: the run's numbers would go unchecked (an `error`, not a `skip`).
    whole = (ctx.golden_metrics or {}).get(METRIC)
    if not whole:
        return CheckResult(NAME, "error", "no golden lm loss to compare with: the run's losses were not checked")
    golden = {step: value for step, value in whole.items() if 1 <= step <= ctx.train_iters}
    uncovered = _uncovered(sorted(whole), ctx.train_iters)
    if uncovered:
        return CheckResult(NAME, "error", f"the golden does not cover the run: {uncovered}; the run's losses there "
                                          "would go unchecked (record a golden of the same length)",
                           {"golden_steps": [min(whole), max(whole)], "train_iters": ctx.train_iters})
    effective = views.effective_metrics(ctx.history)
    records = {step: record for step, (_, record) in effective.items()}
    plain_golden, plain_actual, derived = _split(golden, dict(ctx.golden_loss_windows), records)
    evidence: dict = {"steps_compared": len(golden), "effective_steps": len(records)}
    beyond = sorted(step for step in whole if step > ctx.train_iters)
    if beyond:
        evidence["golden_steps_beyond_the_run"] = [beyond[0], beyond[-1]]
    if derived:
        evidence["loss_windows"] = [{"step": s, "window": list(w), "expected": e, "actual": a}
                                    for s, w, e, a in derived]

    comparison = ctx.comparison({METRIC: plain_golden}, {METRIC: plain_actual})
    divergence = comparison.first_divergence
    evidence["comparison"] = describe(comparison)
    window_failure = _first_window_failure(ctx, derived)
    if divergence is not None:
        _, step, expected, got = divergence
        source = effective.get(step, (None, None))[0]
        evidence["first_divergence"] = {"step": step, "golden": expected, "actual": got, "attempt": source}
    if not comparison.passed or window_failure is not None:
        candidates = []
        if not comparison.passed:
            candidates.append(divergence)
        if window_failure is not None:
            candidates.append((METRIC, *window_failure[:3]))
        _, step, expected, got = min(candidates, key=lambda c: c[1])  # type: ignore[misc]
        attempt = effective.get(step, (None, None))[0]
        evidence["first_divergence"] = {"step": step, "golden": expected, "actual": got, "attempt": attempt}
        if got is None:
            detail = f"no attempt reported lm loss for step {step} (golden={expected!r})"
        else:
            what = ""
            if window_failure is not None and step == window_failure[0]:
                what = f" (a mean over steps {list(window_failure[3])}, as the trainer printed it)"
            detail = (f"lm loss diverges from the golden at step {step}: golden={expected!r}, actual={got!r}"
                      f"{what} (attempt {attempt})")
        return CheckResult(NAME, "fail", detail, evidence)

    superseded = _superseded(ctx, golden)
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
    if derived:
        note += f"; {len(derived)} printed mean(s) over a loss window checked against the golden's mean"
    rule = f"; {evidence['comparison']}" if evidence["comparison"] else ""
    return CheckResult(NAME, "pass", f"lm loss matches the golden at all {len(golden)} steps{note}{rule}", evidence)


def _uncovered(steps: list[int], train_iters: int) -> str:
    """'' when the golden's steps (at their own interval, as Megatron's files may have) span 1..train_iters."""
    interval = math.gcd(*[b - a for a, b in zip(steps, steps[1:])]) if len(steps) > 1 else 1
    if steps[0] > interval:
        return f"it starts at step {steps[0]}"
    if steps[-1] <= train_iters - interval:
        return f"it ends at step {steps[-1]}, the run has train_iters={train_iters}"
    return ""


# ---- loss windows ----------------------------------------------------------------------------------------
Derived = tuple[int, tuple[int, ...], float | None, float]
"""(step, window, expected from the golden or None when it cannot say, actual)."""


def _split(golden: Mapping[int, float], golden_windows: Mapping[int, tuple[int, ...]],
           records: Mapping[int, dict], steps: Iterable[int] | None = None
           ) -> tuple[dict[int, float], dict[int, float], list[Derived]]:
    """The golden and actual values compared as they are, and the windowed ones compared by derivation
    (over `steps`, default every golden step; derivations may use any golden step)."""
    plain_golden: dict[int, float] = {}
    plain_actual: dict[int, float] = {}
    derived: list[Derived] = []
    for step in (golden if steps is None else steps):
        expected = golden[step]
        record = records.get(step)
        value = record.get("lm_loss") if record else None
        window = tuple(record["loss_window"]) if record and record.get("loss_window") else None
        if window == golden_windows.get(step) or value is None:
            plain_golden[step] = expected
            if value is not None:
                plain_actual[step] = value
            continue
        members = window or (step,)
        derived.append((step, members, expected_mean(golden, golden_windows, members), float(value)))
    return plain_golden, plain_actual, derived


def expected_mean(golden: Mapping[int, float], golden_windows: Mapping[int, tuple[int, ...]],
                  members: tuple[int, ...]) -> float | None:
    """What the golden says the mean loss over `members` is (None when it cannot say): shared with the report,
    which plots a printed mean against the same expectation the check uses."""
    parts = [_golden_loss(golden, golden_windows, s) for s in members]
    return None if any(p is None for p in parts) else math.fsum(parts) / len(parts)  # type: ignore[arg-type]


def _golden_loss(golden: Mapping[int, float], windows: Mapping[int, tuple[int, ...]], step: int,
                 depth: int = 0) -> float | None:
    """The golden's own loss at `step`: as recorded, or recovered from a two-step window's mean."""
    if step not in golden:
        return None
    window = windows.get(step)
    if not window:
        return golden[step]
    if len(window) != 2 or window[1] != step or depth > 2:
        return None
    before = _golden_loss(golden, windows, window[0], depth + 1)
    return None if before is None else 2 * golden[step] - before


def _first_window_failure(ctx: CheckContext, derived: list[Derived]) -> tuple[int, Any, float, tuple] | None:
    for step, window, expected, actual in sorted(derived):
        if expected is None or not _close(ctx, expected, actual):
            return step, expected, actual, window
    return None


def _close(ctx: CheckContext, expected: float, actual: float) -> bool:
    from chaos.comparison import tolerance_for

    rtol = tolerance_for(METRIC, ctx.tolerance, ctx.comparison_mode)
    if ctx.comparison_mode == "megatron":
        return abs(actual - expected) <= rtol * abs(expected)
    fmt = ctx.printed_formats.get(METRIC, "%.6E")
    digits = int(fmt.rstrip("Ee").split(".")[-1]) if "." in fmt else 6
    quantum = 10.0 ** (math.floor(math.log10(abs(expected))) - digits) if expected else 0.0
    # exact: the derivation's print rounding only; calibrated: plus the tolerance measured for the metric
    return abs(actual - expected) <= PRINT_QUANTA * quantum + rtol * abs(expected)


def _superseded(ctx: CheckContext, golden: Mapping[int, float]) -> tuple[int, int, Any, Any] | None:
    """(attempt, step, golden, actual) of the first value an earlier attempt reported that the golden rejects."""
    for attempt in ctx.history.attempts:
        records = {s: r for s, r in views.attempt_metrics(attempt).items() if s in golden}
        plain_golden, plain_actual, derived = _split(golden, ctx.golden_loss_windows, records, steps=sorted(records))
        if plain_actual:
            result = ctx.comparison({METRIC: {s: plain_golden[s] for s in plain_actual}}, {METRIC: plain_actual})
            if not result.passed and result.first_divergence is not None:
                _, step, expected, got = result.first_divergence
                return attempt.index, step, expected, got
        failure = _first_window_failure(ctx, derived)
        if failure is not None:
            return attempt.index, failure[0], failure[1], failure[2]
    return None
