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
        why = _why_the_job_gave_up(ctx, evidence) if outcome == "job_gave_up" else ""
        return CheckResult(NAME, "fail", f"the run ended {outcome or 'without a run_end record'} after {restarts} "
                                         f"restart(s) (max_restarts={ctx.restart.max_restarts}){why}", evidence)
    if restarts > ctx.restart.max_restarts:
        return CheckResult(NAME, "fail", f"{restarts} restarts exceed max_restarts={ctx.restart.max_restarts}",
                           evidence)
    return CheckResult(NAME, "pass", f"complete after {restarts} restart(s) of {ctx.restart.max_restarts} allowed",
                       evidence)


def _why_the_job_gave_up(ctx: CheckContext, evidence: dict) -> str:
    """restart.by: job: how the job's launcher ended, and what of the job it left running (a launcher killed
    outright leaves its workers to run on: the scheduler's cleanup, here chaos's teardown, ends them); or that
    the job's in-process layer re-entered past restart.max_restarts and chaos stopped it."""
    spent = ctx.history.supervisor_events(h.REENTRIES_SPENT)
    if spent:
        evidence["reentries_spent"] = {"attempt": spent[-1].get("attempt"), "max_restarts": ctx.restart.max_restarts}
        return (f": its in-process restart re-entered the training function once more at the end of attempt "
                f"{spent[-1].get('attempt')}, past restart.max_restarts={ctx.restart.max_restarts} re-entries, and chaos "
                f"stopped the job there")
    exits = ctx.history.supervisor_events(h.AGENT_EXIT)
    if not exits:
        return ""
    last = exits[-1]
    how = f"of {last['signal']}" if last.get("signal") else f"with exit code {last.get('returncode')}"
    evidence["launcher_exit"] = {key: last.get(key) for key in ("attempt", "pid", "returncode", "signal")}
    why = f": its launcher (pid {last.get('pid')}) exited {how}"
    teardowns = [r for r in ctx.history.supervisor_events(h.TEARDOWN) if r.get("attempt") == last.get("attempt")]
    stopped = sorted({pid for r in teardowns for pid in (r.get("sigterm") or []) + (r.get("sigkill") or [])})
    if stopped:
        evidence["left_running"] = stopped
        why += (f", leaving {len(stopped)} of its processes running (pids {stopped}) until chaos's teardown "
                f"stopped them")
    return why
