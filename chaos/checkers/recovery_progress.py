"""Oracle 12: every recovery advanced; a job restarted again and again that fails the same way each time is a
restart loop, not a recovery.

Megatron-LM issue #5281: a job restarted 44 times from the same corrupt checkpoint, each time dying
identically; each restart was within its budget (a generous `max_restarts` would have let it go on), and
no other check says the restarts were pointless. Per attempt after the first, its *resume point* (the
iteration the authoritative rank's `checkpoint_loaded` names; without one, the iteration it was loading
when it died: its last `checkpoint.load` point or `checkpoint_rejected`; none: from scratch) and its
*failure signature*: how the attempt ended, where its authoritative rank stopped (the last `point` or
`step_begin`: step and phase) and the exit statuses of the ranks that died on their own (a `rank_exit`
that is not clean, teardown's own kills left out). An attempt in which a planned fault landed failed
because the tester made it: it is never part of a loop. More than RESTART_LOOP_LIMIT consecutive failed
attempts without a landed fault, with one resume point and one signature, fail the check. Workload-free:
a log-followed trainer's histories carry the same events.

An in-process restart (the job re-entered its training function in the same processes: attempt_start
`in_process`) must also not go back further than the newest checkpoint committed before it: a re-entered
function that does not load starts again from iteration 1 and throws committed progress away (Megatron-LM
issue #2774), however often it then advances. A fresh process (chaos's or a launcher's restart) can only
resume from disk, and which checkpoint it took is resume_point's to judge; an entry re-run in a process that
held the lost state in memory is judged here.
"""

from __future__ import annotations

from typing import Any

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult
from chaos.history import AttemptHistory

NAME = "recovery_progress"

RESTART_LOOP_LIMIT = 2
"""The most consecutive identical failed restarts allowed (one retry of a failure may be bad luck; the
third identical one is a loop)."""

_STOP_EVENTS = (h.POINT, h.STEP_BEGIN)
_LOADING_PHASE = "checkpoint.load"


def _rank_with(attempt: AttemptHistory, events: tuple[str, ...]) -> int | None:
    """Rank 0 when it wrote any of `events`, else the lowest rank that did."""
    ranks = [r for r in sorted(attempt.ranks) if any(rec["event"] in events for rec in attempt.ranks[r])]
    if not ranks:
        return None
    return 0 if 0 in ranks else ranks[0]


def resume_point(attempt: AttemptHistory | None) -> tuple[int | None, bool]:
    """(iteration, finished loading): the checkpoint_loaded iteration (True), else the iteration the
    authoritative rank was loading when the attempt ended (False), else (None, False): from scratch or died
    before loading anything."""
    if attempt is None:
        return None, False
    record = views.loaded_record(attempt)
    if record is not None and record.get("iteration") is not None:
        return int(record["iteration"]), True
    rank = _rank_with(attempt, (h.POINT, h.CHECKPOINT_REJECTED))
    loading = None
    for record in attempt.ranks.get(rank, []) if rank is not None else []:
        if record["event"] == h.POINT and record.get("phase") == _LOADING_PHASE and record.get("step") is not None:
            loading = int(record["step"])
        elif record["event"] == h.CHECKPOINT_REJECTED:
            iteration = record.get("iteration")
            if iteration is None:
                iteration = views.iteration_of(record.get("path"))
            if iteration is not None:
                loading = int(iteration)
    return loading, False


def stopped_at(attempt: AttemptHistory | None) -> tuple[int | None, str | None] | None:
    """(step, phase) of the authoritative rank's last point or step_begin; None when it reached neither."""
    if attempt is None:
        return None
    rank = _rank_with(attempt, _STOP_EVENTS)
    if rank is None:
        return None
    last = [rec for rec in attempt.ranks[rank] if rec["event"] in _STOP_EVENTS][-1]
    step = last.get("step")
    phase = last.get("phase") if last["event"] == h.POINT else None
    return (int(step) if step is not None else None, phase)


def unclean_exits(history: h.RunHistory, index: int) -> list[tuple[Any, Any]]:
    """Sorted distinct (returncode, signal) of the attempt's ranks that died on their own: not clean, and not
    teardown's kills (a rank still running when the attempt was torn down ends as teardown's race decides).
    Where the job restarts itself (restart.by: job) its launcher tears the others down as soon as one rank
    fails, as its own race decides: only the first rank to fail says how the attempt failed."""
    records = sorted((r for r in history.supervisor_events(h.RANK_EXIT)
                      if r.get("attempt") == index and not r.get("during_teardown")
                      and not (r.get("returncode") == 0 and r.get("signal") is None)),
                     key=lambda r: r.get("mono") or 0.0)
    if _restarts_by_job(history):
        known = [r for r in records if r.get("returncode") is not None or r.get("signal") is not None]
        records = known[:1]
    exits = {(r.get("returncode"), r.get("signal")) for r in records}
    return sorted(exits, key=lambda pair: (str(pair[0]), str(pair[1])))


def _restarts_by_job(history: h.RunHistory) -> bool:
    return any(r.get("by") == "job" for r in history.supervisor_events(h.ATTEMPT_START))


def in_process_regressions(history: h.RunHistory, indices: list[int]) -> list[dict]:
    """The in-process restarts among `indices` that resumed before the newest checkpoint committed before them
    (one the tester corrupted excluded: passing over it is right): {attempt, resumed_from, newest_committed}.
    Where it resumed: the iteration it loaded (or was loading), else the step before its first step; one that
    neither loaded nor began a step went back nowhere yet."""
    in_process = {int(r["attempt"]) for r in history.supervisor_events(h.ATTEMPT_START) if r.get("in_process")}
    found = []
    for index in (i for i in indices if i in in_process):
        attempt = views.attempt_by_index(history, index)
        iteration, _ = resume_point(attempt)
        first_step, _ = views.step_range(attempt) if attempt is not None else (None, None)
        if iteration is None and first_step is not None:
            iteration = first_step - 1
        if iteration is None:
            continue
        corrupted = views.corrupted_iterations(history, views.attempt_start_mono(history, index))
        committed = [i for i in views.committed_checkpoints(history, before_attempt=index) if i not in corrupted]
        newest = max(committed, default=0)
        if iteration < newest:
            found.append({"attempt": index, "resumed_from": iteration, "newest_committed": newest})
    return found


def _describe_exits(exits: list) -> str:
    words = []
    for returncode, signal in exits:
        if signal:
            words.append(f"{signal}")
        elif returncode is None:
            words.append("exit unknown")
        else:
            words.append(f"exit {returncode}")
    return ", ".join(words)


def describe_signature(outcome: str | None, stop: tuple | None, exits: list) -> str:
    text = outcome or "ended without an attempt_end record"
    if stop is None:
        text += " before its first step"
    else:
        step, phase = stop
        text += f" at step {step}" + (f" phase {phase}" if phase else "")
    exited = _describe_exits(exits)
    return f"{text}, {exited}" if exited else text


def _describe_resume(iteration: int | None, loaded: bool) -> str:
    if iteration is None:
        return "loaded no checkpoint"  # it died before its load began (or said nothing of it)
    if not iteration:
        return "started from scratch"
    return f"loaded iteration {iteration}" if loaded else f"tried to load iteration {iteration}"


def check(ctx: CheckContext) -> CheckResult:
    history = ctx.history
    indices = views.attempt_indices(history)
    if len(indices) < 2:
        return CheckResult(NAME, "skip", "no restart: no recovery to judge", {"attempts": len(indices)})
    outcomes = views.attempt_outcomes(history)
    faulted = {int(r["attempt"]) for r in history.supervisor_events(h.FAULT_LANDED) if r.get("attempt") is not None}
    rows: list[dict] = []
    runs: list[list[dict]] = []  # consecutive identical failures (no landed fault)
    current: list[dict] = []
    for index in indices[1:]:
        attempt = views.attempt_by_index(history, index)
        iteration, loaded = resume_point(attempt)
        outcome = outcomes.get(index)
        stop = stopped_at(attempt)
        exits = unclean_exits(history, index)
        row = {"attempt": index, "resume_from": iteration, "load_finished": loaded, "outcome": outcome,
               "stopped_at": None if stop is None else {"step": stop[0], "phase": stop[1]},
               "exits": [list(pair) for pair in exits], "fault_landed": index in faulted}
        rows.append(row)
        if outcome == "complete" or index in faulted:
            current = []
            continue
        key = (iteration or 0, outcome, stop, tuple(exits))
        if current and current[-1]["_key"] == key:
            current.append({"row": row, "_key": key})
        else:
            current = [{"row": row, "_key": key}]
            runs.append(current)
    longest = max((len(run) for run in runs), default=0)
    loops = [run for run in runs if len(run) > RESTART_LOOP_LIMIT]
    regressions = in_process_regressions(history, indices[1:])
    in_process = {int(r["attempt"]) for r in history.supervisor_events(h.ATTEMPT_START) if r.get("in_process")}
    evidence = {"attempts": rows, "restart_loop_limit": RESTART_LOOP_LIMIT, "longest_identical_failures": longest,
                "loops": [[item["row"]["attempt"] for item in run] for run in loops],
                "in_process_regressions": regressions}
    failures = [f"attempt {r['attempt']}, an in-process restart, went back to iteration {r['resumed_from']} though "
                f"iteration {r['newest_committed']} was committed before it: it threw committed progress away "
                f"(Megatron-LM issue #2774)" for r in regressions]
    for run in loops:
        first, last = run[0]["row"], run[-1]["row"]
        stop = first["stopped_at"]
        signature = describe_signature(first["outcome"], None if stop is None else (stop["step"], stop["phase"]),
                                       [tuple(pair) for pair in first["exits"]])
        resume = _describe_resume(first["resume_from"], all(item["row"]["load_finished"] for item in run))
        which = (", in-process re-entries of the training function,"
                 if all(item["row"]["attempt"] in in_process for item in run) else "")
        failures.append(f"attempts {first['attempt']}-{last['attempt']}{which} each {resume} and died the same way "
                        f"({signature}): a restart loop; every recovery must advance")
    if failures:
        return CheckResult(NAME, "fail", "; ".join(failures), evidence)
    restarts = len(indices) - 1
    return CheckResult(NAME, "pass", f"every recovery advanced: {restarts} restart(s), the longest run of identical "
                                     f"failures was {longest}", evidence)
