"""Facts derived from a run's history, shared by the checkers and the report.

Rank 0's records are authoritative for metrics (every rank logs the same lm loss); when rank 0 wrote
nothing in an attempt (killed before its first record) the lowest rank that did stands in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from chaos import history as h
from chaos.checkpoint_layout import (  # noqa: F401  (re-exported for the checkers)
    TRACKER, iteration_dir_name, iteration_of, read_tracker,
)
from chaos.history import AttemptHistory, RunHistory


# ---- ranks and attempts ------------------------------------------------------------------------------
def authoritative_rank(attempt: AttemptHistory, event: str = h.METRICS) -> int | None:
    ranks = [r for r in sorted(attempt.ranks) if any(rec["event"] == event for rec in attempt.ranks[r])]
    if not ranks:
        return None
    return 0 if 0 in ranks else ranks[0]


def attempt_metrics(attempt: AttemptHistory) -> dict[int, dict]:
    """step -> the metrics record of the authoritative rank (the last one, if a step was logged twice)."""
    rank = authoritative_rank(attempt)
    if rank is None:
        return {}
    return {int(rec["step"]): rec for rec in attempt.events(h.METRICS, rank=rank)}


def effective_metrics(history: RunHistory) -> dict[int, tuple[int, dict]]:
    """step -> (attempt, record) from the latest attempt that reported the step."""
    out: dict[int, tuple[int, dict]] = {}
    for attempt in history.attempts:
        for step, record in attempt_metrics(attempt).items():
            out[step] = (attempt.index, record)
    return dict(sorted(out.items()))


def effective_series(history: RunHistory, field: str) -> dict[int, Any]:
    return {step: rec.get(field) for step, (_, rec) in effective_metrics(history).items() if rec.get(field) is not None}


def attempt_series(attempt: AttemptHistory, field: str) -> dict[int, Any]:
    return {step: rec.get(field) for step, rec in attempt_metrics(attempt).items() if rec.get(field) is not None}


def superseded_divergence(history: RunHistory, field: str, metric: str, golden: dict[int, Any],
                          compare: Callable[[Any, Any], Any]) -> tuple[int, int, Any, Any] | None:
    """(attempt, step, golden, actual) of the first value an attempt reported for `field` that `compare`
    rejects, the steps later recomputed included (a step must have been right every time it was computed);
    None when every reported value passes. `golden` is step -> value of `metric` (golden spelling)."""
    for attempt in history.attempts:
        reported = {s: v for s, v in attempt_series(attempt, field).items() if s in golden}
        if not reported:
            continue
        result = compare({metric: {s: golden[s] for s in reported}}, {metric: reported})
        if not result.passed and result.first_divergence is not None:
            _, step, expected, got = result.first_divergence
            return attempt.index, step, expected, got
    return None


def loaded_record(attempt: AttemptHistory) -> dict | None:
    """The authoritative rank's checkpoint_loaded record (where this attempt resumed), if it got that far."""
    rank = authoritative_rank(attempt, h.CHECKPOINT_LOADED)
    if rank is None:
        return None
    records = list(attempt.events(h.CHECKPOINT_LOADED, rank=rank))
    return records[-1]


def loaded_iterations(attempt: AttemptHistory) -> dict[int, int]:
    """rank -> iteration it reported loading (ranks must agree)."""
    out = {}
    for rank in sorted(attempt.ranks):
        for record in attempt.events(h.CHECKPOINT_LOADED, rank=rank):
            out[rank] = int(record["iteration"])
    return out


def step_range(attempt: AttemptHistory) -> tuple[int | None, int | None]:
    """(first step begun, last step completed) over all ranks."""
    begun = [int(r["step"]) for r in attempt.events(h.STEP_BEGIN)]
    ended = [int(r["step"]) for r in attempt.events(h.STEP_END)]
    return (min(begun) if begun else None, max(ended) if ended else None)


def save_in_flight(attempt: AttemptHistory, before_mono: float | None) -> int | None:
    """The newest save this attempt began (`checkpoint.begin`) and had not committed before `before_mono`:
    an async save still being written in the background, or a synchronous one cut short. None: no save was
    open."""
    def before(record: dict) -> bool:
        return before_mono is None or float(record.get("mono", before_mono)) <= before_mono

    begun = {int(r["step"]) for r in attempt.events(h.POINT)
             if r.get("phase") == "checkpoint.begin" and r.get("step") is not None and before(r)}
    committed = {int(r["iteration"]) for r in attempt.events(h.CHECKPOINT_COMMITTED) if before(r)}
    open_saves = begun - committed
    return max(open_saves) if open_saves else None


def attempt_by_index(history: RunHistory, index: int) -> AttemptHistory | None:
    for attempt in history.attempts:
        if attempt.index == index:
            return attempt
    return None


def attempt_indices(history: RunHistory) -> list[int]:
    """Every attempt seen by the supervisor or by a rank, in order."""
    seen = {a.index for a in history.attempts}
    for record in history.supervisor:
        if record["event"] in (h.ATTEMPT_START, h.ATTEMPT_END) and record.get("attempt") is not None:
            seen.add(int(record["attempt"]))
    return sorted(seen)


def attempt_outcomes(history: RunHistory) -> dict[int, str]:
    return {int(r["attempt"]): r.get("outcome") for r in history.supervisor_events(h.ATTEMPT_END)}


def attempt_start_mono(history: RunHistory, index: int) -> float | None:
    """When an attempt started: the supervisor's attempt_start, else the earliest record of any rank."""
    for record in history.supervisor_events(h.ATTEMPT_START):
        if int(record["attempt"]) == index and record.get("mono") is not None:
            return float(record["mono"])
    attempt = attempt_by_index(history, index)
    if attempt is None:
        return None
    monos = [rec["mono"] for records in attempt.ranks.values() for rec in records if rec.get("mono") is not None]
    return min(monos) if monos else None


def last_progress_mono(history: RunHistory, index: int, before: float | None = None) -> float | None:
    """The last record any rank of the attempt wrote (before `before`): where a hang's idle time starts."""
    attempt = attempt_by_index(history, index)
    monos = [] if attempt is None else [
        rec["mono"] for records in attempt.ranks.values() for rec in records
        if rec.get("mono") is not None and (before is None or rec["mono"] <= before)]
    return max(monos) if monos else attempt_start_mono(history, index)


def hang_latency(history: RunHistory, record: dict) -> float | None:
    """Seconds from the last progress any rank of the attempt recorded to a hang_detected `record`
    (None when either end is unknown)."""
    last = last_progress_mono(history, int(record["attempt"]), record.get("mono"))
    if last is None or record.get("mono") is None:
        return None
    return record["mono"] - last


def train_end_reasons(attempt: AttemptHistory) -> set[str]:
    return {r.get("reason") for r in attempt.events(h.TRAIN_END)}


# ---- checkpoints ---------------------------------------------------------------------------------------
def committed_checkpoints(history: RunHistory, before_attempt: int | None = None) -> dict[int, dict]:
    """iteration -> {attempt, path} of every checkpoint_committed (in attempts before `before_attempt`)."""
    out: dict[int, dict] = {}
    for attempt in history.attempts:
        if before_attempt is not None and attempt.index >= before_attempt:
            continue
        for record in attempt.events(h.CHECKPOINT_COMMITTED):
            info = {"attempt": attempt.index, "path": record.get("path")}
            if record.get("files") is not None:
                info["files"] = record["files"]  # what an observer saw in the directory at commit (black box)
            out.setdefault(int(record["iteration"]), info)
    return dict(sorted(out.items()))


def corrupted_records(history: RunHistory, before_mono: float | None = None) -> list[dict]:
    records = history.supervisor_events(h.CORRUPTED)
    if before_mono is not None:
        records = [r for r in records if r.get("mono") is None or r["mono"] < before_mono]
    return records


def corrupted_iterations(history: RunHistory, before_mono: float | None = None) -> set[int]:
    """Iterations the tester damaged (before `before_mono`) and nobody committed again since: a later save
    of the same iteration replaces the damaged directory, and that one must be intact like any other."""
    recommitted: dict[int, float] = {}
    for attempt in history.attempts:
        for record in attempt.events(h.CHECKPOINT_COMMITTED):
            mono = record.get("mono")
            if mono is not None and (before_mono is None or mono < before_mono):
                iteration = int(record["iteration"])
                recommitted[iteration] = max(mono, recommitted.get(iteration, mono))
    out = set()
    for record in corrupted_records(history, before_mono):
        iteration = record.get("iteration")
        if iteration is None:
            iteration = iteration_of(Path(str(record.get("path", ""))).parent) or iteration_of(record.get("path"))
        if iteration is None:
            continue
        if record.get("mono") is not None and recommitted.get(int(iteration), float("-inf")) > record["mono"]:
            continue
        out.add(int(iteration))
    return out


def _recommitted(history: RunHistory, iteration: int, after: float, before: float | None) -> bool:
    """Whether any attempt committed `iteration` again between `after` and `before` (a new directory replacing
    a lost one)."""
    return any(int(r["iteration"]) == iteration and r.get("mono") is not None and r["mono"] > after
               and (before is None or r["mono"] < before)
               for attempt in history.attempts for r in attempt.events(h.CHECKPOINT_COMMITTED))


def lost_iterations(history: RunHistory, before_mono: float | None = None) -> dict[int, dict]:
    """iteration -> the node_lost record of a node loss (before `before_mono`) that took files of that
    checkpoint with its disk, unless the iteration was committed again since."""
    out: dict[int, dict] = {}
    for record in history.supervisor_events(h.NODE_LOST):
        mono = record.get("mono")
        if before_mono is not None and mono is not None and mono >= before_mono:
            continue
        for iteration in record.get("iterations") or []:
            if mono is not None and _recommitted(history, int(iteration), float(mono), before_mono):
                continue
            out[int(iteration)] = record
    return out


def rejected_checkpoints(history: RunHistory, up_to_attempt: int | None = None) -> dict[int, dict]:
    """iteration -> {attempt, rank, reason} of checkpoint_rejected records."""
    out: dict[int, dict] = {}
    for attempt in history.attempts:
        if up_to_attempt is not None and attempt.index > up_to_attempt:
            continue
        for record in attempt.events(h.CHECKPOINT_REJECTED):
            iteration = record.get("iteration")
            if iteration is None:
                iteration = iteration_of(record.get("path"))
            if iteration is not None:
                out.setdefault(int(iteration), {"attempt": attempt.index, "rank": record.get("rank"),
                                                "reason": record.get("reason")})
    return out


# ---- faults -----------------------------------------------------------------------------------------------
def landings(history: RunHistory) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in history.supervisor_events(h.FAULT_LANDED):
        out.setdefault(str(record.get("fault_id")), []).append(record)
    return out


def misses(history: RunHistory) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in history.supervisor_events(h.FAULT_MISSED):
        out.setdefault(str(record.get("fault_id")), []).append(record)
    return out


def landed_ranks(records: Iterable[dict]) -> set[int]:
    """A landing names one rank, or a list of them for a multi-rank target."""
    ranks: set[int] = set()
    for record in records:
        value = record.get("rank", record.get("ranks"))
        if isinstance(value, (list, tuple)):
            ranks.update(int(v) for v in value)
        elif value is not None:
            ranks.add(int(value))
    return ranks
