"""A faulted run's checkpoint state against the golden's at the same iteration, entry by entry.

The rule follows the reproducibility the golden measured, never `golden.mode` (a user who keeps Megatron's
5 % on the loss still learns that the state came back different):
- an entry equal in every uninterrupted run (or recorded from one run of a pinned job) must be bitwise equal;
- a tensor that varied between uninterrupted runs may differ by SPREAD_FACTOR x the relative L2 distance
  measured between them. The golden keeps fingerprints, not tensors, so the distance is estimated: the larger
  of the norms' relative difference (a lower bound of the true distance) and the distance over a fixed
  sample of elements scaled to the whole tensor (chaos.state.fingerprint.estimated_distance); the spread it
  is held to was measured between the uninterrupted runs both exactly and by this same estimate, the larger
  kept, so a tensor whose few large elements make the estimate noisy is given the room that noise needs;
- a value (or an integer tensor) that varied between uninterrupted runs cannot be judged and is listed.
A non-finite element where the golden had none is always a difference.

Only the categories a resume must restore fail a check (chaos.state.entries.JUDGED); `other` differences
are reported beside.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from chaos.calibration import SPREAD_FACTOR
from chaos.state.entries import CATEGORIES, JUDGED, describe
from chaos.state.fingerprint import Entry, estimated_distance


@dataclass
class Difference:
    key: str
    category: str
    what: str
    """How a person names it (chaos.state.entries.describe)."""
    kind: str
    """missing | extra | differs | beyond_spread | non_finite"""
    golden: dict[str, Any] = field(default_factory=dict)
    actual: dict[str, Any] = field(default_factory=dict)
    distance: float | None = None
    """Estimated relative L2 distance (tensors)."""
    allowed: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"key": self.key, "category": self.category, "what": self.what, "kind": self.kind,
               "golden": self.golden, "actual": self.actual}
        if self.distance is not None:
            out["distance"] = self.distance if math.isfinite(self.distance) else repr(self.distance)
        if self.allowed is not None:
            out["allowed"] = self.allowed
        return out

    def sentence(self) -> str:
        if self.kind == "missing":
            return f"{self.what} is missing"
        if self.kind == "extra":
            return f"{self.what} is not in the golden's checkpoint"
        if self.kind == "non_finite":
            return f"{self.what} has {self.actual.get('nonfinite')} non-finite element(s), the golden none"
        shown = ""
        if self.golden.get("value") is not None or self.actual.get("value") is not None:
            shown = f" (golden {_short(self.golden.get('value'))}, actual {_short(self.actual.get('value'))})"
        elif self.distance is not None and math.isfinite(self.distance):
            shown = f" (relative L2 distance ~{self.distance:.3g}"
            shown += f", allowed {self.allowed:.3g})" if self.allowed is not None else ")"
        return f"{self.what} differs{shown}"


@dataclass
class StateComparison:
    iteration: int
    compared: int = 0
    identical: int = 0
    within_spread: int = 0
    differences: list[Difference] = field(default_factory=list)
    """In the judged categories: each one fails the check. Ordered by CATEGORIES, then key."""
    notes: list[Difference] = field(default_factory=list)
    """Differences in `other` (reported, not judged)."""
    varying: list[str] = field(default_factory=list)
    """Entries that varied between uninterrupted runs and cannot be judged (values, integer tensors)."""
    accepted: list[tuple[Difference, str]] = field(default_factory=list)
    """Differences the scenario accepts, each with the reason it gave (reported, not failing)."""

    @property
    def passed(self) -> bool:
        return not self.differences

    def by_category(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for difference in self.differences:
            out[difference.category] = out.get(difference.category, 0) + 1
        return out

    def to_dict(self, limit: int = 20) -> dict[str, Any]:
        return {"iteration": self.iteration, "compared": self.compared, "identical": self.identical,
                "within_spread": self.within_spread, "differing": len(self.differences),
                "differing_by_category": self.by_category(),
                "differences": [d.to_dict() for d in self.differences[:limit]],
                "differing_keys": [d.key for d in self.differences[:500]],
                "other_differences": [d.to_dict() for d in self.notes[:limit]],
                "accepted_differences": [{**d.to_dict(), "reason": why} for d, why in self.accepted[:limit]],
                "varying_between_golden_runs": self.varying[:limit]}


def compare_state(iteration: int, golden: Mapping[str, Entry], spread: Mapping[str, Any],
                  actual: Mapping[str, Entry], accepted: Mapping[str, str] | None = None) -> StateComparison:
    """`golden`: the golden's entries at this iteration; `spread`: key -> relative L2 distance measured between
    uninterrupted runs (tensors) or 'differs' (values), absent where they were identical; `actual`: the
    faulted run's entries; `accepted`: entry pattern (fnmatch) -> why the scenario accepts that it differs."""
    result = StateComparison(iteration)
    for key in sorted(set(golden) | set(actual)):
        mine, theirs = golden.get(key), actual.get(key)
        entry = mine or theirs
        if entry is None or entry.category == "configuration":
            continue
        judged = entry.category in JUDGED
        result.compared += 1
        difference = _difference(key, mine, theirs, spread.get(key))
        if difference is None:
            result.identical += 1
        elif difference == "within":
            result.within_spread += 1
        elif difference == "varying":
            result.varying.append(key)
        else:
            reason = next((why for pattern, why in (accepted or {}).items() if fnmatch.fnmatchcase(key, pattern)), None)
            if reason is not None:
                result.accepted.append((difference, reason))
            else:
                (result.differences if judged else result.notes).append(difference)
    order = {name: n for n, name in enumerate(CATEGORIES)}
    result.differences.sort(key=lambda d: (order.get(d.category, len(order)), d.key))
    return result


def _difference(key: str, golden: Entry | None, actual: Entry | None, spread: Any) -> Difference | str | None:
    entry = golden or actual
    assert entry is not None
    what = describe(key, entry.kind)
    if golden is None:
        return Difference(key, entry.category, what, "extra", actual=_summary(actual))
    if actual is None:
        return Difference(key, entry.category, what, "missing", golden=_summary(golden))
    if (actual.nonfinite or 0) > 0 and not golden.nonfinite:
        return Difference(key, golden.category, what, "non_finite", _summary(golden), _summary(actual))
    if actual.sha256 == golden.sha256:
        return None
    measured = spread if isinstance(spread, (int, float)) and not isinstance(spread, bool) else None
    if spread is not None and measured is None:
        return "varying"  # a value that was not the same in two uninterrupted runs: nothing to hold it to
    if measured and math.isfinite(measured) and golden.kind == "tensor" and _is_float(golden.dtype):
        distance = estimated_distance(golden, actual)
        allowed = SPREAD_FACTOR * measured
        if distance is not None and distance <= allowed and (actual.nonfinite or 0) <= (golden.nonfinite or 0):
            return "within"
        return Difference(key, golden.category, what, "beyond_spread", _summary(golden), _summary(actual),
                          distance, allowed)
    if measured is not None and not math.isfinite(measured):
        return "varying"
    distance = estimated_distance(golden, actual) if golden.kind == "tensor" and _is_float(golden.dtype) else None
    return Difference(key, golden.category, what, "differs", _summary(golden), _summary(actual), distance)


def _is_float(dtype: str | None) -> bool:
    return bool(dtype) and (dtype.startswith("float") or dtype == "bfloat16")


def _summary(entry: Entry | None) -> dict[str, Any]:
    if entry is None:
        return {}
    keys = ("sha256", "value", "norm", "nonfinite", "dtype", "shape")
    return {k: getattr(entry, k) for k in keys if getattr(entry, k) is not None}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
