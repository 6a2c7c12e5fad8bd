"""Oracle 3: steps lost per fault <= save interval; 0 for a graceful SIGTERM.

Steps lost = the last step completed (step_end) in the faulted attempt minus the iteration the next attempt
that loaded anything resumed from. When the tester corrupted checkpoints in between, each one skipped
legitimately costs one more save interval. A SIGTERM to a workload that promises Megatron's
exit-signal-handler (exit_on_sigterm, the default) must stop the attempt gracefully and lose nothing.

An asynchronous save (Megatron's --async-save, DCP's async_save) is committed only when the training loop
finalizes it, some steps after it began: a fault that lands while save k is still being written loses
what k would have kept plus the steps run since k began, so the bound grows by that lag
(last completed step - k). The lag itself stays bounded: a trainer finalizes save k before it begins the
next one, so k is the newest save begun, and a trainer that never finalizes still fails (its open save's
predecessor was never committed either). Measured on one H200: a kill at the metadata write of the
iteration-30 async save landed after step 31 and lost 11 steps at save_interval 10.

A pause or straggler that outlasts its attempt (torn down as a hang, or the job gave up) counts like a
kill; so does a pause at least as long as the job's own hang detection (restart.job_hang_timeout_s: an in-process
restart's soft timeout, ft_launcher's heartbeat timeout) whose attempt then ended unfinished, the job having
restarted because of it; one the job rode out loses nothing and is the `stalls` check's.
"""

from __future__ import annotations

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult

NAME = "steps_lost"


def check(ctx: CheckContext) -> CheckResult:
    history = ctx.history
    landed = views.landings(history)
    exit_on_sigterm = ctx.exit_on_sigterm
    outcomes = views.attempt_outcomes(history)
    corrupted = views.corrupted_iterations(history)
    rows, failures = [], []
    # (or, beside the ranks under restart.by: job, outlived the attempt the job ended because of it)
    stalls_that_ended_attempts = {str(r.get("fault_id")) for r in history.supervisor_events(h.STALL_ENDED)
                                  if r.get("by") == "attempt_end" or r.get("outlived_attempt")}
    job_bound = ctx.restart.job_hang_timeout_s
    for fault in ctx.plan:
        records = landed.get(fault.id)
        if not records:
            continue
        # a stall that outlasted its attempt (hang detection tore it down) loses steps like a kill does, and so
        # does one the job's own hang detection restarted the job for (its attempt ended unfinished)
        restarted_for = (fault.action.halts and job_bound is not None and fault.action.duration_s >= job_bound
                         and outcomes.get(int(records[0]["attempt"])) not in ("complete", "preempted"))
        counts = fault.action.interrupts or fault.id in stalls_that_ended_attempts or restarted_for
        if not counts:
            continue
        attempt_index = int(records[0]["attempt"])
        signal = fault.action.sends_signal or records[0].get("signal")
        attempt = views.attempt_by_index(history, attempt_index)
        _, last_step = views.step_range(attempt) if attempt else (None, None)
        loaded = views.loaded_record(attempt) if attempt else None
        if last_step is None:
            last_step = int(loaded["iteration"]) if loaded else None
        outcome = outcomes.get(attempt_index)
        reasons = views.train_end_reasons(attempt) if attempt else set()
        preempted = outcome == "preempted" or "preempted" in reasons
        completed = outcome == "complete" or "complete" in reasons
        graceful = signal == "SIGTERM" and (preempted or exit_on_sigterm)
        row = {"fault_id": fault.id, "signal": signal, "attempt": attempt_index, "last_completed_step": last_step,
               "attempt_outcome": outcome, "graceful": graceful}
        rows.append(row)

        if completed:
            row["steps_lost"] = 0
            if graceful:
                failures.append(f"{fault.id}: SIGTERM in attempt {attempt_index} did not stop it (it ran on to "
                                f"'complete'): the exit-signal handler ignored the signal")
            continue
        resumed_in, resumed_record = None, None
        for later in history.attempts:
            if later.index > attempt_index:
                resumed_record = views.loaded_record(later)
                if resumed_record is not None:
                    resumed_in = later
                    break
        if resumed_in is None:
            row["steps_lost"] = None
            failures.append(f"{fault.id}: no attempt resumed after the fault in attempt {attempt_index}")
            continue
        resumed_from = int(resumed_record["iteration"])
        row["resumed_in_attempt"] = resumed_in.index
        row["resumed_from"] = resumed_from
        if last_step is None:
            row["steps_lost"] = 0
            row["note"] = "the faulted attempt completed no step"
            continue
        lost = last_step - resumed_from
        row["steps_lost"] = lost
        skipped_corrupt = sum(1 for i in corrupted if resumed_from < i <= last_step)
        in_flight = views.save_in_flight(attempt, records[0].get("mono")) if attempt else None
        lag = max(0, last_step - in_flight) if in_flight is not None else 0
        allowed = 0 if graceful else ctx.save_interval * (1 + skipped_corrupt) + lag
        row["allowed"] = allowed
        if lag:
            row["save_in_flight"] = {"iteration": in_flight, "steps_since_it_began": lag}
        if lost < 0:
            failures.append(f"{fault.id}: attempt {resumed_in.index} resumed from iteration {resumed_from}, past the "
                            f"last step completed ({last_step}): {-lost} step(s) skipped")
        elif lost > allowed:
            why = "graceful SIGTERM must lose none" if graceful else f"save_interval={ctx.save_interval}"
            if lag and not graceful:
                why += f" + {lag} step(s) run while the save of iteration {in_flight} was in flight"
            if skipped_corrupt:
                why += f", {skipped_corrupt} corrupted checkpoint(s) skipped"
            failures.append(f"{fault.id}: {lost} step(s) lost (last completed {last_step} in attempt {attempt_index}, "
                            f"resumed from {resumed_from}); at most {allowed} allowed ({why})")
    evidence = {"faults": rows, "save_interval": ctx.save_interval}
    if failures:
        return CheckResult(NAME, "fail", "; ".join(failures), evidence)
    if not rows:
        return CheckResult(NAME, "skip", "no signal fault landed (nor a stall that ended its attempt)", evidence)
    lost = ", ".join(f"{r['fault_id']}: {r['steps_lost']}" for r in rows)
    return CheckResult(NAME, "pass", f"steps lost per fault within bounds ({lost})", evidence)
