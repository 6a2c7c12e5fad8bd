"""How a faulted run's logged metrics are compared with a golden's: exactly (bitwise, or as printed for values
read from a log), within the tolerances a calibrated golden measured (chaos.calibration), or with
Megatron-LM's fixed relative tolerances and allowance of failing steps.

Pure Python; never imports torch.
"""

from __future__ import annotations

import math
import statistics
import struct
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from chaos.golden import (
    DEFAULT_TOLERANCE, FALLBACK_TOLERANCE, ITERATION_TIME_STEPS, NONDETERMINISTIC_METRICS, Golden,
)


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    passed: bool
    compared_steps: int
    failing_steps: tuple[int, ...]
    """Steps out of tolerance (exact: not bitwise equal), including missing ones."""
    missing_steps: tuple[int, ...]
    """Golden steps the actual run has no value for."""
    allowed_failures: int
    """0 in exact and calibrated mode; Megatron's min(max(n // 100, 1), 50) in megatron mode."""
    tolerance: float | None
    """Relative tolerance (megatron mode, calibrated mode for a metric that varied); None = bitwise."""
    first_failure: tuple[int, float, float | None] | None = None
    """(step, golden, actual) of the first failing step."""
    note: str = ""


@dataclass(frozen=True)
class Comparison:
    mode: Literal["exact", "calibrated", "megatron"]
    passed: bool
    metrics: tuple[MetricComparison, ...]
    first_divergence: tuple[str, int, float, float | None] | None
    """(metric, step, golden, actual): the earliest step out of tolerance in any metric, even when the
    allowance of failing steps (megatron mode) lets the comparison pass."""

    def summary(self) -> str:
        rule = {"exact": "bitwise", "calibrated": "calibrated from repeated runs"}.get(self.mode,
                                                                                    "Megatron relative tolerance")
        if self.first_divergence is None:
            compared = ", ".join(f"{m.metric} ({m.compared_steps} steps)" for m in self.metrics)
            return f"matches the golden ({rule}): {compared}"
        metric, step, golden, actual = self.first_divergence
        verdict = "within the allowed failing steps" if self.passed else "FAILED"
        return (f"{metric} mismatch at step {step}: golden={golden!r}, actual={actual!r} ({rule}; {verdict}; "
                + "; ".join(f"{m.metric}: {len(m.failing_steps)}/{m.compared_steps} failing, "
                            f"{m.allowed_failures} allowed" for m in self.metrics) + ")")


def compare(golden: Golden, actual: Mapping[str, Mapping[int, float]], mode: str,
            tolerance: Mapping[str, float] | None = None, metrics: tuple[str, ...] | None = None,
            printed_formats: Mapping[str, str] | None = None, skip: tuple[str, ...] = ()) -> Comparison:
    """Compares an actual run with a golden over the steps the golden has (at its step_interval).

    exact: every compared value bitwise equal (default metrics: all of the golden's but timing and memory);
    a metric in `printed_formats` (read from a trainer's log, e.g. Megatron's `%.6E` lm loss) is equal when
    both sides print the same: a full-precision golden (Megatron's own files) is compared as printed.
    calibrated (chaos.calibration): the same metrics; each with its own relative tolerance from `tolerance`
    (the measured spread times a factor), exact as above where that is 0 or the metric is not named.
    megatron: relative tolerance, atol 0, min(max(n // 100, 1), 50) failing steps allowed per metric
    (default metrics: lm loss, num-zeros if both sides have it, plus any metric named in `tolerance`).
    A metric the golden lacks cannot be compared: that is a failure, not a skip. `skip`: metrics left out of
    the defaults (a calibrated rule's metrics that no relative tolerance fits).
    """
    if mode not in ("exact", "calibrated", "megatron"):
        raise ValueError(f"unknown comparison mode {mode!r}; expected exact, calibrated or megatron")
    if metrics is None:
        defaults = {**DEFAULT_TOLERANCE, **(tolerance or {})} if mode == "megatron" else dict(tolerance or {})
        metrics = tuple(m for m in _default_metrics(golden, actual, mode, defaults) if m not in skip)
    printed_formats = printed_formats or {}
    results = []
    for metric in metrics:
        expected, got = golden.metrics.get(metric), actual.get(metric)
        rtol = tolerance_for(metric, tolerance, mode)
        if _is_exact(mode, rtol) and metric in printed_formats:
            expected, got = as_printed(expected, printed_formats[metric]), as_printed(got, printed_formats[metric])
        results.append(_compare_metric(metric, expected, got, mode, rtol))
    first = None
    for result in results:
        if result.first_failure is not None:
            candidate = (result.first_failure[0], result.metric, *result.first_failure[1:])
            if first is None or candidate[0] < first[0]:
                first = candidate
    divergence = None if first is None else (first[1], first[0], first[2], first[3])
    return Comparison(mode=mode, passed=all(r.passed for r in results), metrics=tuple(results),  # type: ignore[arg-type]
                      first_divergence=divergence)


def as_printed(values: Mapping[int, float] | None, fmt: str) -> dict[int, float] | None:
    """The values as a trainer printing them with `fmt` shows them (e.g. "%.6E": 7 significant digits)."""
    if values is None:
        return None
    return {step: float(fmt % value) for step, value in values.items()}


def tolerance_for(metric: str, tolerance: Mapping[str, float] | None = None, mode: str = "megatron") -> float:
    """The relative tolerance for `metric`. megatron: the scenario's override, Megatron's default, else
    FALLBACK_TOLERANCE. calibrated: the rule's tolerance for it (0 = exact). exact: 0."""
    if mode == "calibrated":
        return float((tolerance or {}).get(metric, 0.0))
    if mode == "exact":
        return 0.0
    return {**DEFAULT_TOLERANCE, **(tolerance or {})}.get(metric, FALLBACK_TOLERANCE)


def _is_exact(mode: str, rtol: float) -> bool:
    return mode == "exact" or (mode == "calibrated" and rtol == 0.0)


def value_matches(expected: float, actual: float | None, mode: str, rtol: float) -> bool:
    """One step's rule: bitwise equal (exact, or calibrated with tolerance 0) or within relative tolerance
    `rtol`, atol 0. Shared with the HTML report, so its marked points are the ones the comparison counts as
    failing."""
    if actual is None:
        return False
    if _is_exact(mode, rtol):
        return _bitwise_equal(expected, actual)
    if not (_finite(expected) and _finite(actual)):
        return _bitwise_equal(expected, actual)
    return abs(actual - expected) <= rtol * abs(expected)


def _default_metrics(golden: Golden, actual: Mapping[str, Any], mode: str, tolerance: Mapping[str, float]) -> tuple:
    if mode in ("exact", "calibrated"):
        return tuple(m for m in golden.metrics if m not in NONDETERMINISTIC_METRICS)
    chosen = ["lm loss"]
    if "num-zeros" in golden.metrics and "num-zeros" in actual:
        chosen.append("num-zeros")
    chosen += [m for m in tolerance if m not in DEFAULT_TOLERANCE and m in golden.metrics]
    return tuple(dict.fromkeys(chosen))


def _compare_metric(metric: str, expected: Mapping[int, float] | None, got: Mapping[int, float] | None, mode: str,
                    rtol: float) -> MetricComparison:
    exact = _is_exact(mode, rtol)
    if not expected:
        return MetricComparison(metric, False, 0, (), (), 0, None if exact else rtol,
                                note="the golden has no values for this metric")
    got = got or {}
    if metric == "iteration-time" and mode == "megatron":
        return _compare_median(metric, expected, got, rtol)
    steps = sorted(expected)
    missing = tuple(step for step in steps if step not in got)
    failing = []
    for step in steps:
        if not value_matches(expected[step], got.get(step), mode, rtol):
            failing.append(step)
    allowed = min(max(len(steps) // 100, 1), 50) if mode == "megatron" else 0
    # Megatron's allowance is for noise: a step the run never reported, or a NaN / inf where the golden is
    # finite, is never noise, and fails whatever the allowance.
    hard = [s for s in failing if s in missing or not _finite(got[s]) and _finite(expected[s])]
    first = (failing[0], expected[failing[0]], got.get(failing[0])) if failing else None
    notes = []
    if missing:
        notes.append(f"the actual run has no value at {len(missing)} golden step(s)")
    if len(hard) > len(missing):
        notes.append(f"non-finite value(s) at step(s) {[s for s in hard if s not in missing][:5]}")
    passed = len(failing) <= allowed and not hard
    return MetricComparison(metric, passed, len(steps), tuple(failing), missing, allowed,
                            None if exact else rtol, first, "; ".join(notes))


def _finite(value: float) -> bool:
    return math.isfinite(float(value))


def _compare_median(metric: str, expected: Mapping[int, float], got: Mapping[int, float], rtol: float) -> MetricComparison:
    low, high = ITERATION_TIME_STEPS
    steps = [s for s in sorted(expected) if low <= s <= high]
    missing = tuple(s for s in steps if s not in got)
    if not steps or missing:
        return MetricComparison(metric, False, len(steps), tuple(missing), missing, 0, rtol,
                                note=f"needs steps {low}-{high} on both sides (compared as their median)")
    golden_median = statistics.median(expected[s] for s in steps)
    actual_median = statistics.median(got[s] for s in steps)
    ok = abs(actual_median - golden_median) <= rtol * abs(golden_median)
    first = None if ok else (steps[0], golden_median, actual_median)
    return MetricComparison(metric, ok, len(steps), () if ok else (steps[0],), (), 0, rtol, first,
                            note=f"median of steps {low}-{high}")


def _bitwise_equal(a: float, b: float) -> bool:
    a, b = float(a), float(b)
    if math.isnan(a) and math.isnan(b):
        return True  # JSON keeps no NaN payload; two NaNs at one step are the same divergence
    return struct.pack("<d", a) == struct.pack("<d", b)
