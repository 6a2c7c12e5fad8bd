"""What one planted bug's run means for the scenario's checks, and the score over all of them.

- caught: the bug acted and the run failed at least one check;
- missed: the bug acted, changed the job (against the control run) and every check passed;
- inert: the bug did not change the job: it never acted (its trigger never came: no checkpoint was loaded, no
  older checkpoint to pick...), or it acted and every logged value and checkpoint entry still equals the
  control's. It did not exercise this job: neither caught nor missed;
- not applicable: it cannot apply to this job (no CUDA generator on CPU), decided before running or said by
  the ranks;
- undecided: the bug acted and the run could not be judged (verdict error): counted, as not caught;
- error: the selftest itself could not tell (the layer never loaded or failed in a rank, or the run failed
  although the bug never acted): not counted, and the selftest fails.

score = caught / (caught + missed + undecided).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CAUGHT, MISSED, INERT, NOT_APPLICABLE, UNDECIDED, ERROR = (
    "caught", "missed", "inert", "not applicable", "undecided", "error")
COUNTED = (CAUGHT, MISSED, UNDECIDED)


@dataclass
class BugOutcome:
    bug: str
    verdict: str
    why: str
    """One line: the first evidence of the failing check, what changed, or why it is inert / not applicable."""
    checks: list[str] = field(default_factory=list)
    """The checks that failed on the bug's run."""
    acted: list[str] = field(default_factory=list)
    """What the ranks said the bug did."""
    run_dir: str | None = None
    run_verdict: str | None = None
    seconds: float = 0.0
    plant: dict[str, Any] = field(default_factory=dict)
    change: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"bug": self.bug, "verdict": self.verdict, "why": self.why, "checks": self.checks,
                "acted": self.acted[:20], "run_dir": self.run_dir, "run_verdict": self.run_verdict,
                "seconds": round(self.seconds, 2), "plant": self.plant, "change": self.change}


def classify(bug: str, result, evidence, compare_with_control) -> BugOutcome:
    """`result`: the bug run's chaos.runner.RunResult; `evidence`: chaos.selftest.planted.PlantEvidence;
    `compare_with_control()`: chaos.selftest.change.Change (called only when the run passed)."""
    outcome = BugOutcome(bug, ERROR, "", acted=list(evidence.acted), run_dir=str(result.run_dir),
                         run_verdict=result.verdict, plant=evidence.to_dict())
    failing = [c for c in result.checks if c["status"] == "fail"]
    outcome.checks = [c["name"] for c in failing]
    if evidence.failed:
        outcome.why = f"the bug could not be planted: {evidence.failed[0]}"
    elif not evidence.processes:
        outcome.why = ("the injection layer was never loaded in a rank: the job's interpreter did not run "
                       "sitecustomize from PYTHONPATH (python -S or -I, or a launcher that replaces PYTHONPATH)")
    elif not evidence.acted and evidence.not_applicable:
        outcome.verdict, outcome.why = NOT_APPLICABLE, evidence.not_applicable[0]
    elif not evidence.acted and result.verdict == "fail":
        outcome.why = (f"the run failed {', '.join(outcome.checks)} although the bug never acted: is the job "
                       "reproducible under the same faults? compare with the control run")
    elif not evidence.acted:
        outcome.verdict = INERT
        outcome.why = "it never acted: " + (evidence.idle[0] if evidence.idle else
                                            "no checkpoint was loaded in any rank" if not evidence.loads else
                                            "its trigger never came after the load")
    elif result.verdict == "fail":
        outcome.verdict = CAUGHT
        first = failing[0] if failing else {"name": "?", "detail": ""}
        outcome.why = f"{first['name']}: {first['detail']}"
    elif result.verdict != "pass":
        outcome.verdict = UNDECIDED
        errors = [c for c in result.checks if c["status"] == "error"]
        outcome.why = (result.report.get("extra", {}).get("infrastructure_error")
                       or (f"{errors[0]['name']}: {errors[0]['detail']}" if errors else f"verdict {result.verdict}"))
    else:
        change = compare_with_control()
        outcome.change = change.to_dict()
        outcome.verdict = MISSED if change.changed else INERT
        outcome.why = (f"every check passed, but {change.what}" if change.changed
                       else f"it acted, but {change.what}")
    return outcome


def static_outcome(bug: str, why: str) -> BugOutcome:
    return BugOutcome(bug, NOT_APPLICABLE, why)


@dataclass
class Score:
    caught: int
    counted: int

    @property
    def fraction(self) -> float | None:
        return self.caught / self.counted if self.counted else None

    def __str__(self) -> str:
        return f"{self.caught}/{self.counted}"


def score(outcomes: list[BugOutcome]) -> Score:
    return Score(sum(o.verdict == CAUGHT for o in outcomes), sum(o.verdict in COUNTED for o in outcomes))
