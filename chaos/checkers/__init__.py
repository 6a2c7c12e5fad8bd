"""Checkers: was the run right? One module per oracle (README: "The checks"), one registry entry each.

A checker reads only the history and the files on disk (CheckContext) and returns a CheckResult:
pass / fail / skip (unknown) / error, with evidence. Like Jepsen, an exception inside a checker becomes an
`error` result with its traceback's last line; it never crashes the analysis.

Adding a checker = one module with ``check(ctx) -> CheckResult`` + one entry in CHECKS (and its name in
chaos.scenario.model.CHECK_NAMES, so scenarios may pick it).
"""

from __future__ import annotations

import traceback
from typing import Iterable

from chaos.checkers import (
    checkpoint_state,
    checkpoints_load,
    data_order,
    faults_landed,
    final_state,
    no_survivors,
    node_loss,
    recovery_progress,
    stalls,
    restart_budget,
    resume_point,
    steps_lost,
    trajectory,
)
from chaos.checkers.base import Check, CheckContext, CheckResult, ExactComparison, exact_compare

CHECKS: dict[str, Check] = {
    "trajectory": trajectory.check,
    "resume_point": resume_point.check,
    "steps_lost": steps_lost.check,
    "data_order": data_order.check,
    "final_state": final_state.check,
    "checkpoint_state": checkpoint_state.check,
    "checkpoints_load": checkpoints_load.check,
    "faults_landed": faults_landed.check,
    "no_survivors": no_survivors.check,
    "restart_budget": restart_budget.check,
    "recovery_progress": recovery_progress.check,
    "stalls": stalls.check,
    "node_loss": node_loss.check,
}
"""Every checker by name, in report order."""


def run_check(ctx: CheckContext, name: str) -> CheckResult:
    check = CHECKS.get(name)
    if check is None:
        return CheckResult(name, "error", f"unknown check {name!r}; expected one of {list(CHECKS)}")
    try:
        result = check(ctx)
    except Exception as error:  # noqa: BLE001 - a checker's bug is reported, never a crash
        lines = traceback.format_exception_only(type(error), error)
        return CheckResult(name, "error", f"checker raised: {lines[-1].strip()}",
                           {"exception": True, "traceback": traceback.format_exc()})
    if not isinstance(result, CheckResult):
        return CheckResult(name, "error", f"checker returned {type(result).__name__}, not a CheckResult",
                           {"exception": True})
    return result


def run_checks(ctx: CheckContext, names: Iterable[str] | None = None) -> list[CheckResult]:
    """Runs the named checks (all when None), each isolated from the others' failures."""
    return [run_check(ctx, name) for name in (list(CHECKS) if names is None else names)]


def verdict(results: Iterable[CheckResult | dict]) -> str:
    """Jepsen's rule, false beats unknown beats true: 'fail' when any check failed (a real failure is never
    reported as "could not decide", e.g. a trainer that cannot resume, so its later faults never land);
    else 'error' when any check could not decide (a fault that never landed, a checker that raised): the
    run proved nothing; else 'pass'. Skips do not count either way."""
    statuses = [r["status"] if isinstance(r, dict) else r.status for r in results]
    if "fail" in statuses:
        return "fail"
    if "error" in statuses:
        return "error"
    return "pass"


__all__ = ["CHECKS", "Check", "CheckContext", "CheckResult", "ExactComparison", "exact_compare", "run_check",
           "run_checks", "verdict"]
