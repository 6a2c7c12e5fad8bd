"""Oracle 9: training finished, within the restart budget."""

from __future__ import annotations

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult

NAME = "restart_budget"


def check(ctx: CheckContext) -> CheckResult:
    ends = ctx.history.supervisor_events(h.RUN_END)
    outcome = ends[-1].get("outcome") if ends else None
    attempts = len(views.attempt_indices(ctx.history))
    restarts = max(attempts - 1, 0)
    evidence = {"outcome": outcome, "attempts": attempts, "restarts": restarts,
                "max_restarts": ctx.restart.max_restarts}
    if outcome != "complete":
        return CheckResult(NAME, "fail", f"the run ended {outcome or 'without a run_end record'} after {restarts} "
                                         f"restart(s) (max_restarts={ctx.restart.max_restarts})", evidence)
    if restarts > ctx.restart.max_restarts:
        return CheckResult(NAME, "fail", f"{restarts} restarts exceed max_restarts={ctx.restart.max_restarts}",
                           evidence)
    return CheckResult(NAME, "pass", f"complete after {restarts} restart(s) of {ctx.restart.max_restarts} allowed",
                       evidence)
