"""Oracle 10: a stall the job should survive is ridden out: a pause or a partition shorter than the hang
timeout, and any straggler.

A paused rank (SIGSTOP for `pause` seconds, then SIGCONT) stalls every collective, exactly as a stalled
host does; a straggler (a CPU quota on a rank or a node for a while) slows every step down to its pace.
The job must survive both: after the stall the attempt goes on, with a step completed after the stall
ended (or its normal end). It fails when the attempt died or was torn down during the stall, or made no
step after it: a collective timeout, a heartbeat or a watchdog in the job set tighter than the stalls it
will meet; for a straggler also a hang detector that mistakes slow for stuck (the evidence gives the
slowed step time against hang_timeout_s).

A partition (a node's link cut, hosts: netns) stalls the collectives the same way. A pause or partition
at least as long as restart.hang_timeout_s is hang detection's to handle: the attempt is torn down
and resumed, and the other checks judge the resume; this check only records it. For each straggler the
evidence shows its cost: the median step time before it and while it held.
"""

from __future__ import annotations

import statistics

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult

NAME = "stalls"


def check(ctx: CheckContext) -> CheckResult:
    planned = [fault for fault in ctx.plan if fault.action.stall]
    if not planned:
        return CheckResult(NAME, "skip", "no pause or straggler was planned")
    landed = views.landings(ctx.history)
    outcomes = views.attempt_outcomes(ctx.history)
    hang_timeout = ctx.restart.hang_timeout_s
    rows, failures = [], []
    for fault in planned:
        kind = fault.action.kind
        records = landed.get(fault.id)
        row = {"fault_id": fault.id, "kind": kind, "stall": fault.action.describe(), "hang_timeout_s": hang_timeout}
        rows.append(row)
        if not records:
            row["landed"] = False  # faults_landed says why
            continue
        index = int(records[0]["attempt"])
        since = float(records[0]["mono"])
        ranks = sorted({int(r["rank"]) for r in records})
        outcome = outcomes.get(index)
        row.update(attempt=index, ranks=ranks, attempt_outcome=outcome)
        end = next((r for r in ctx.history.supervisor_events(h.STALL_ENDED)
                    if str(r.get("fault_id")) == fault.id and int(r["attempt"]) == index), None)
        if end is not None:
            row.update(ended_by=end.get("by"), stalled_s=end.get("stalled_s"))
        attempt = views.attempt_by_index(ctx.history, index)
        if not fault.action.halts and attempt is not None:  # a straggler slows steps down: by how much
            row.update(_step_times(attempt, since, float(end["mono"]) if end is not None else None))
        if fault.action.halts and fault.action.duration_s >= hang_timeout:
            row["expected"] = "hang detection tears the attempt down (the other checks judge the resume)"
            continue
        job_bound = ctx.restart.job_hang_timeout_s
        if fault.action.halts and job_bound is not None and fault.action.duration_s >= job_bound:
            row["expected"] = (f"the job's own hang detection ends it (job_hang_timeout_s={job_bound:g}; the "
                               f"other checks judge the resume)")
            continue
        who = f"{fault.action.stall_phrase()} rank(s) {ranks} in attempt {index} (hang_timeout_s={hang_timeout:g})"
        ran_its_course = end is not None and end.get("by") == "elapsed"
        if outcome in ("complete", "preempted") and not ran_its_course:
            row["progress_after_stall"] = True  # training reached its end before the stall did
            continue
        if not ran_its_course:
            failures.append(f"{fault.id}: the attempt ended during {who}{_how(ctx, index, since)}{_slowed(row)}")
            continue
        after = float(end["mono"])
        went_on = attempt is not None and any(float(r.get("mono", 0.0)) > after
                                              for event in (h.STEP_END, h.TRAIN_END) for r in attempt.events(event))
        row["progress_after_stall"] = went_on
        if not went_on:
            failures.append(f"{fault.id}: no step completed after {who} ended{_how(ctx, index, after)}")
    evidence = {"stalls": rows}
    if failures:
        return CheckResult(NAME, "fail", "the job did not ride out a stall it should survive: " + "; ".join(failures),
                           evidence)
    if not any("attempt" in row for row in rows):
        return CheckResult(NAME, "skip", "no pause or straggler landed", evidence)
    ridden = [row for row in rows if "attempt" in row and "expected" not in row]
    parts = [f"{len(ridden)} stall(s) ridden out"]
    parts += [f"{row['fault_id']} step time {row['step_time_before_s']:.2f} s -> {row['step_time_during_s']:.2f} s"
              for row in ridden if row.get("step_time_before_s") and row.get("step_time_during_s")]
    longer = len([row for row in rows if "expected" in row])
    if longer:
        parts.append(f"{longer} pause(s) or partition(s) longer than the hang timeout left to hang detection "
                     f"(chaos's or the job's own)")
    return CheckResult(NAME, "pass", "; ".join(parts), evidence)


def _step_times(attempt, since: float, until: float | None) -> dict:
    """Median step time (step_begin to step_end, per rank, all ranks) of the steps that ended before the
    straggler began, and of those that ran while it held, in whole or in part."""
    begins = {(r["rank"], int(r["step"])): float(r["mono"]) for r in attempt.events(h.STEP_BEGIN) if "mono" in r}
    before, during = [], []
    for record in attempt.events(h.STEP_END):
        key = (record["rank"], int(record["step"]))
        if key not in begins or "mono" not in record:
            continue
        began, ended = begins[key], float(record["mono"])
        if ended <= since:
            before.append(ended - began)
        elif until is None or began < until:
            during.append(ended - began)
    out: dict = {}
    if before:
        out["step_time_before_s"] = round(statistics.median(before), 3)
    if during:
        out["step_time_during_s"] = round(statistics.median(during), 3)
    if before and during and out["step_time_before_s"] > 0:
        out["slowdown"] = round(out["step_time_during_s"] / out["step_time_before_s"], 2)
    return out


def _slowed(row: dict) -> str:
    if not row.get("step_time_during_s"):  # measured for stalls that slow steps (a straggler) only
        return ""
    return f"; slowed steps took {row['step_time_during_s']:.2f} s"


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
