"""The checkers' types: what a check reads (CheckContext), what it returns (CheckResult), and the
exact comparison used when the lead injects no golden comparison.

A check is a plain function ``check(ctx) -> CheckResult``. Like Jepsen's checkers it reads only the
history and the files on disk, and it says pass / fail / skip (unknown) with evidence a person can follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol

from chaos.history import RunHistory
from chaos.plan import PlannedFault, RestartPolicy
from chaos.workloads.base import CheckpointLayout, WorkloadFacts

Status = Literal["pass", "fail", "skip", "error"]
STATUSES = ("pass", "fail", "skip", "error")

Metrics = Mapping[str, Mapping[int, float]]
"""metric name (golden spelling: `lm loss`, `consumed samples`) -> step -> value."""


class ComparisonLike(Protocol):
    passed: bool
    first_divergence: tuple[str, int, Any, Any] | None
    """(metric, step, golden, actual); actual None = no value at that step."""


@dataclass
class CheckContext:
    run_dir: Path
    history: RunHistory
    plan: tuple[PlannedFault, ...]
    golden_metrics: dict[str, dict[int, float]] | None
    golden_final_state_hash: str | None
    compare: Callable[[Metrics, Metrics], ComparisonLike] | None
    """(golden, actual) -> comparison; chaos.golden supplies the exact or Megatron-tolerance one.
    None = chaos.golden's exact mode, the rule production uses (bitwise: -0.0 is not 0.0)."""
    train_iters: int
    save_interval: int
    restart: RestartPolicy
    checkpoint_dir: Path
    golden_data_hashes: Mapping[int, str] | None = None
    """step -> the golden's data hash (chaos.golden.Golden.data_hashes); None or empty = the golden recorded
    none, so data_order compares consumed samples only."""
    facts: WorkloadFacts | None = None
    """The workload's facts (keep_last, exit_on_sigterm...); None = the defaults of chaos's own trainer."""
    layout: CheckpointLayout | None = None
    """How a committed checkpoint looks on disk (the workload's); the checks that read checkpoints need it."""
    final_state_unavailable: str | None = None
    """Why final_state cannot decide for this workload (e.g. its trainer prints no state hash)."""
    golden_loss_windows: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    """step -> steps the golden's lm loss there is the mean of (chaos.golden.Golden.loss_windows)."""
    printed_formats: Mapping[str, str] = field(default_factory=dict)
    """metric -> the format the trainer prints it with (values read from logs): exact = equal as printed."""
    comparison_mode: str = "exact"
    """exact | calibrated | megatron: the rule the logged metrics are compared by (chaos.calibration)."""
    tolerance: Mapping[str, float] = field(default_factory=dict)
    """metric -> relative tolerance under that rule (calibrated: 0 = exact; megatron: overrides)."""
    golden_checkpoints: Mapping[int, Any] = field(default_factory=dict)
    """iteration -> chaos.golden.GoldenCheckpoint: the uninterrupted run's saved state, as fingerprints."""
    golden_checkpoint_files: Mapping[str, int] = field(default_factory=dict)
    """File name pattern -> count every committed checkpoint of the uninterrupted run had (chaos.state.layout)."""
    accepted_state_differences: Mapping[str, str] = field(default_factory=dict)
    """Checkpoint entry pattern -> why the scenario accepts that it differs (reported, never failing)."""
    golden_repeats: int | None = None
    """How many uninterrupted runs the golden's spread was measured from (None: not calibrated)."""
    memo: dict[str, Any] = field(default_factory=dict, repr=False)
    """Work the checks share within one analysis (a checkpoint read once serves checkpoint_state and final_state)."""

    @property
    def exit_on_sigterm(self) -> bool:
        return self.facts.exit_on_sigterm if self.facts is not None else True

    @property
    def keep_last(self) -> int:
        return self.facts.keep_last if self.facts is not None else 0

    def checkpoint_problems(self, directory: Path, committed: Mapping[str, Any] | None = None) -> list[str]:
        """What is wrong with a committed checkpoint directory: judged by the files the golden's uninterrupted
        run had in every checkpoint where the golden learned them, else by the workload's own list."""
        if self.layout is None:
            raise ValueError("no checkpoint layout: the workload's (CheckContext.layout) is needed to judge a "
                             "checkpoint on disk")
        return self.layout.problems(directory, committed, dict(self.golden_checkpoint_files) or None)

    def comparison(self, golden: Metrics, actual: Metrics) -> ComparisonLike:
        if self.compare is not None:
            return self.compare(golden, actual)
        from chaos.comparison import compare  # torch-free; imported late: it imports the checkers' seams
        from chaos.golden import Golden

        return compare(Golden(metrics=dict(golden)), actual, "exact")


@dataclass
class CheckResult:
    name: str
    status: Status
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name}: status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "evidence": self.evidence}


Check = Callable[[CheckContext], CheckResult]


# ---- the default comparison --------------------------------------------------------------------------
@dataclass(frozen=True)
class ExactComparison:
    passed: bool
    first_divergence: tuple[str, int, Any, Any] | None
    detail: str
    compared_steps: int = 0


def values_equal(golden: Any, actual: Any) -> bool:
    """Exact equality; two NaNs at one step are the same value (JSON keeps no NaN payload)."""
    if isinstance(golden, float) and isinstance(actual, float) and math.isnan(golden) and math.isnan(actual):
        return True
    return golden == actual


def exact_compare(golden: Metrics, actual: Metrics) -> ExactComparison:
    """Every golden (metric, step) must be present in `actual` and exactly equal; first divergence by step."""
    first: tuple[str, int, Any, Any] | None = None
    compared = 0
    for metric, expected in golden.items():
        got = actual.get(metric) or {}
        for step in sorted(expected):
            compared += 1
            value = got.get(step)
            if value is None or not values_equal(expected[step], value):
                if first is None or step < first[1]:
                    first = (metric, step, expected[step], value)
                break
    if first is None:
        return ExactComparison(True, None, f"exactly equal at {compared} compared values", compared)
    metric, step, expected_value, value = first
    return ExactComparison(False, first, f"{metric} mismatch at step {step}: golden={expected_value!r}, "
                                         f"actual={value!r} (exact)", compared)


def describe(comparison: ComparisonLike) -> str:
    """A comparison's own words: `.detail` (the seam's shape) or `.summary()` (chaos.golden.Comparison)."""
    detail = getattr(comparison, "detail", None)
    if isinstance(detail, str):
        return detail
    summary = getattr(comparison, "summary", None)
    return summary() if callable(summary) else ""
