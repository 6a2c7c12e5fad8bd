"""Oracle 10: a stall shorter than the hang timeout is ridden out (pauses).

A paused rank (SIGSTOP for `pause` seconds, then SIGCONT) stalls every collective, exactly as a stalled
host does. A job must survive a stall shorter than what it is allowed to hang for (restart.hang_timeout_s,
the tester's stand-in for the cluster's watchdog): after the SIGCONT the attempt must go on, with a step
completed after the pause ended (or its normal end). It fails when the attempt died during the pause or
made no step after it: a collective timeout, a heartbeat or a watchdog in the job set tighter than the
stalls it will meet. A pause at least as long as hang_timeout_s is hang detection's to handle: the attempt
is torn down and resumed, and the other checks judge the resume; this check only records it.
"""

from __future__ import annotations

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult

NAME = "stalls"


def check(ctx: CheckContext) -> CheckResult:
    planned = [fault for fault in ctx.plan if fault.action.kind == "pause"]
    if not planned:
        return CheckResult(NAME, "skip", "no pause was planned")
    landed = views.landings(ctx.history)
    ended = {(str(r.get("fault_id")), int(r["attempt"])): r for r in ctx.history.supervisor_events(h.PAUSE_ENDED)}
    outcomes = views.attempt_outcomes(ctx.history)
    hang_timeout = ctx.restart.hang_timeout_s
    rows, failures = [], []
    for fault in planned:
        records = landed.get(fault.id)
        duration = float(fault.action.duration_s)
        row = {"fault_id": fault.id, "pause_s": duration, "hang_timeout_s": hang_timeout}
        rows.append(row)
        if not records:
            row["landed"] = False  # faults_landed says why
            continue
        index = int(records[0]["attempt"])
        ranks = sorted({int(r["rank"]) for r in records})
        row.update(attempt=index, ranks=ranks, attempt_outcome=outcomes.get(index))
        end = ended.get((fault.id, index))
        if end is not None:
            row.update(ended_by=end.get("by"), paused_s=end.get("paused_s"))
        if duration >= hang_timeout:
            row["expected"] = "hang detection tears the attempt down (the other checks judge the resume)"
            continue
        who = f"a {duration:g}s pause of rank(s) {ranks} in attempt {index} (hang_timeout_s={hang_timeout:g})"
        if end is None or end.get("by") != "sigcont":
            failures.append(f"{fault.id}: the attempt ended during {who}{_how(ctx, index, float(records[0]['mono']))}")
            continue
        attempt = views.attempt_by_index(ctx.history, index)
        after = float(end["mono"])
        went_on = attempt is not None and any(float(r.get("mono", 0.0)) > after
                                              for event in (h.STEP_END, h.TRAIN_END) for r in attempt.events(event))
        row["progress_after_pause"] = went_on
        if not went_on:
            failures.append(f"{fault.id}: no step completed after {who} ended{_how(ctx, index, after)}")
    evidence = {"stalls": rows}
    if failures:
        return CheckResult(NAME, "fail", "the job did not ride out a stall shorter than its hang timeout: "
                           + "; ".join(failures), evidence)
    if not any("attempt" in row for row in rows):
        return CheckResult(NAME, "skip", "no pause landed", evidence)
    short = sum(1 for row in rows if "attempt" in row and "expected" not in row)
    return CheckResult(NAME, "pass", f"{short} pause(s) shorter than the hang timeout ridden out"
                       + (f", {len(rows) - short} longer left to hang detection" if len(rows) > short else ""),
                       evidence)


def _how(ctx: CheckContext, index: int, since_mono: float) -> str:
    """How the attempt ended, and which ranks exited after `since_mono` with what."""
    outcome = views.attempt_outcomes(ctx.history).get(index)
    exits = [f"rank {r.get('rank')} {_exit(r)}" for r in ctx.history.supervisor_events(h.RANK_EXIT)
             if int(r.get("attempt", -1)) == index and float(r.get("mono", 0.0)) >= since_mono
             and not r.get("during_teardown")]
    hangs = [r for r in ctx.history.supervisor_events(h.HANG_DETECTED) if int(r.get("attempt", -1)) == index]
    parts = [f"attempt ended {outcome}"] if outcome else []
    if exits:
        parts.append("then " + ", ".join(exits))
    if hangs:
        parts.append("hang detected")
    return f" ({'; '.join(parts)})" if parts else ""


def _exit(record: dict) -> str:
    if record.get("signal"):
        return f"killed by {record['signal']}"
    return f"exited {record.get('returncode')}"
