"""How reproducible a job measured itself to be, and the comparison rule that follows.

A golden is recorded from R uninterrupted runs of the job (`chaos golden record --repeats R`). Per metric
and step chaos keeps how far the repeats landed from the golden (the first run); per checkpoint entry, how
far their saved state landed (chaos.state). The rule for a faulted run is then:

- every repeat identical at every step -> **exact**: bitwise for full-precision values, equal as printed for
  values read from a log. A resume that changes anything is seen, however small (a replayed RNG moves the
  loss by 2e-4 relative; Megatron's fixed 5 % never sees it).
- repeats that differ -> **calibrated**: a metric whose repeats were identical stays exact; a metric that
  varied gets the relative tolerance SPREAD_FACTOR x the largest relative difference measured between the
  repeats at any step. Never looser than that: the allowance is a fixed multiple of noise that was measured,
  not a guess. Why a multiple at all: the faulted run's distance from the golden is one more draw from the
  same noise, and with two or three repeats the largest difference seen is an underestimate of the largest
  one possible; 4x keeps a run as noisy as the repeats from failing, while a real resume bug (a replayed
  RNG, lost moments, a skipped step) moves values by orders of magnitude more than the noise of a job that
  is reproducible to 1e-6. More repeats give a truer spread (`--repeats 3` and up for noisy jobs).
- no calibration (Megatron's own golden files, goldens recorded before) -> exact on CPU, Megatron's
  tolerances on CUDA, as before.

An explicit `golden.mode` in the scenario wins (`megatron` keeps upstream CI's fixed tolerances for the
logged metrics), and so does an explicit per-metric `tolerance:`. The checkpoint-state comparison never
follows `golden.mode`: it follows the measured reproducibility alone (chaos.state.compare).

Torch-free and pure: the runner decides the rule once, the checks and reports read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

SPREAD_FACTOR = 4.0
"""Tolerance = this x the largest relative difference measured between uninterrupted runs (see above)."""

MACHINE_METRICS = ("iteration-time", "mem-allocated-bytes", "mem-max-allocated-bytes")
"""Measure the machine, not the math: never part of a calibration or a comparison."""


@dataclass(frozen=True)
class MetricSpread:
    """What R uninterrupted runs showed for one metric, against the golden (the first run)."""

    steps: int
    """Steps compared (the golden's steps that every repeat reported)."""
    differing_steps: int
    """Steps where some repeat's value was not equal to the golden's."""
    max_relative: float
    """Largest |repeat - golden| / |golden| over steps and repeats (inf where the golden is 0 and a repeat is not)."""
    first_differing_step: int | None = None

    @property
    def identical(self) -> bool:
        return self.differing_steps == 0


@dataclass(frozen=True)
class Calibration:
    repeats: int
    metrics: dict[str, MetricSpread] = field(default_factory=dict)
    pinned: str | None = None
    """Why a single run is trusted to be bitwise repeatable (the CPU numerics pins), when repeats == 1."""

    @property
    def identical(self) -> bool:
        return all(spread.identical for spread in self.metrics.values())

    def to_dict(self) -> dict[str, Any]:
        return {"repeats": self.repeats, "pinned": self.pinned,
                "metrics": {name: {"steps": s.steps, "differing_steps": s.differing_steps,
                                   "max_relative": _json_float(s.max_relative),
                                   "first_differing_step": s.first_differing_step}
                            for name, s in self.metrics.items()}}

    @classmethod
    def from_dict(cls, data: Any) -> "Calibration":
        if not isinstance(data, dict) or not isinstance(data.get("repeats"), int) or data["repeats"] < 1:
            raise ValueError("expected {repeats: >= 1, metrics: {...}}")
        metrics = {}
        for name, body in (data.get("metrics") or {}).items():
            if not isinstance(body, dict):
                raise ValueError(f"metrics.{name}: expected a mapping")
            metrics[str(name)] = MetricSpread(int(body["steps"]), int(body["differing_steps"]),
                                              float(body["max_relative"]), body.get("first_differing_step"))
        pinned = data.get("pinned")
        return cls(repeats=data["repeats"], metrics=metrics, pinned=str(pinned) if pinned else None)


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def relative_difference(golden: float, other: float) -> float:
    if golden == other or (math.isnan(golden) and math.isnan(other)):
        return 0.0
    if golden == 0.0 or not math.isfinite(golden) or not math.isfinite(other):
        return math.inf
    return abs(other - golden) / abs(golden)


def measure(golden: Mapping[str, Mapping[int, float]], repeats: list[Mapping[str, Mapping[int, float]]],
            pinned: str | None = None) -> Calibration:
    """The spread of each metric: the golden (the first run) against every other run, step by step."""
    metrics: dict[str, MetricSpread] = {}
    for name, values in golden.items():
        if name in MACHINE_METRICS:
            continue
        steps = [s for s in sorted(values) if all(s in (r.get(name) or {}) for r in repeats)]
        differing, largest, first = 0, 0.0, None
        for step in steps:
            differences = [relative_difference(values[step], r[name][step]) for r in repeats]
            worst = max(differences, default=0.0)
            if worst > 0.0:
                differing += 1
                first = step if first is None else first
                largest = max(largest, worst)
        metrics[name] = MetricSpread(len(steps), differing, largest, first)
    return Calibration(repeats=1 + len(repeats), metrics=metrics, pinned=pinned if not repeats else None)


# ---- the rule -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """How a faulted run's logged metrics are compared with the golden, and why."""

    mode: str
    """exact | calibrated | megatron"""
    why: str
    tolerances: dict[str, float] = field(default_factory=dict)
    """calibrated: metric -> relative tolerance (0 = exact); megatron: the overrides of Megatron's defaults."""
    not_compared: dict[str, str] = field(default_factory=dict)
    """metric -> why it is left out (calibrated: it varied where the golden is 0, so no relative tolerance fits)."""

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "why": self.why, "tolerances": dict(self.tolerances),
                "not_compared": dict(self.not_compared)}


def decide_rule(explicit_mode: str | None, calibration: Calibration | None, device: str,
                tolerance: Mapping[str, float] | None = None) -> Rule:
    """The comparison rule for a run against a golden (see the module docstring for the precedence)."""
    overrides = dict(tolerance or {})
    if explicit_mode is not None:
        why = f"golden.mode: {explicit_mode} set in the scenario"
        if explicit_mode == "calibrated" and calibration is None:
            why += "; the golden has no calibration (recorded without repeats), so every metric compares exactly"
        if explicit_mode == "calibrated":
            return _calibrated(calibration, overrides, why)
        return Rule(explicit_mode, why, overrides if explicit_mode == "megatron" else {})
    if calibration is None:
        if device == "cpu":
            return Rule("exact", "the golden records no repeats (no measured spread): exact, as on every CPU run")
        return Rule("megatron", "the golden records no repeats (no measured spread): Megatron's tolerances, the "
                                "default on CUDA without a calibrated golden", overrides)
    if calibration.identical:
        steps = max((s.steps for s in calibration.metrics.values()), default=0)
        if calibration.repeats == 1:
            why = f"1 run, bitwise repeatable by construction ({calibration.pinned or 'pinned numerics'}): exact"
        else:
            why = f"{calibration.repeats} runs identical at {steps} of {steps} steps: exact"
        if overrides:
            return _calibrated(calibration, overrides, why + "; with the scenario's tolerances for "
                                                              f"{sorted(overrides)}")
        return Rule("exact", why)
    return _calibrated(calibration, overrides, "")


def _calibrated(calibration: Calibration | None, overrides: Mapping[str, float], why: str) -> Rule:
    tolerances: dict[str, float] = {}
    not_compared: dict[str, str] = {}
    parts = []
    for name, spread in (calibration.metrics.items() if calibration else ()):
        if name in overrides:
            tolerances[name] = float(overrides[name])
            parts.append(f"{name} {overrides[name]:.3g} (the scenario's)")
        elif spread.identical:
            tolerances[name] = 0.0
        elif math.isfinite(spread.max_relative):
            tolerances[name] = SPREAD_FACTOR * spread.max_relative
            parts.append(f"{name} {tolerances[name]:.3g} ({spread.differing_steps} of {spread.steps} steps varied, "
                         f"up to {spread.max_relative:.3g})")
        else:
            not_compared[name] = "it varied between uninterrupted runs where the golden is 0 or not finite"
    for name, value in overrides.items():
        tolerances.setdefault(name, float(value))
    if not why:
        exact = [n for n, t in tolerances.items() if t == 0.0]
        repeats = calibration.repeats if calibration else 0
        why = (f"{repeats} uninterrupted runs differ: relative tolerance {SPREAD_FACTOR:g} x the measured spread "
               f"for {'; '.join(parts)}" + (f"; exact for {', '.join(exact)}" if exact else ""))
        if not_compared:
            why += f"; not compared: {', '.join(not_compared)}"
    return Rule("calibrated", why, tolerances, not_compared)
