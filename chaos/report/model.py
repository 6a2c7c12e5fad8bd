"""report.json: one plain dict holding the verdict, every check with its evidence, the faults as planned
and as landed, the attempts, the effective loss curve and the tester's own timings. Everything the
summary, JUnit and HTML renderers show comes from here (plus the history, for the plots)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from chaos import history as h
from chaos import safe_files
from chaos.checkers import verdict as overall_verdict
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult

REPORT_FILE = "report.json"
REPORT_FORMAT = "chaos-report/1"


def build_report(ctx: CheckContext, results: Iterable[CheckResult], scenario_name: str,
                 golden_info: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    results = list(results)
    history = ctx.history
    attempts = attempts_table(ctx)
    return {
        "format": REPORT_FORMAT,
        "verdict": overall_verdict(results),
        "scenario": scenario_name,
        "run_dir": str(ctx.run_dir),
        "checks": [r.to_dict() for r in results],
        "faults": faults_table(ctx),
        "attempts": attempts,
        "losses": views.effective_series(history, "lm_loss"),
        "commits": [{"iteration": i, **info} for i, info in views.committed_checkpoints(history).items()],
        "golden": dict(golden_info or {}),
        "restarts": max(len(attempts) - 1, 0),
        "timings": timings(ctx),
        "train_iters": ctx.train_iters,
        "save_interval": ctx.save_interval,
        "max_restarts": ctx.restart.max_restarts,
        "extra": dict(extra or {}),
        "security_events": security_events(ctx),
    }


def security_events(ctx: CheckContext) -> list[dict[str, Any]]:
    """Processes that were not the run's but carried its token (another user's): never signalled, never
    the job's fault; listed so that people see someone had the token (history `security_event`)."""
    keys = ("attempt", "node", "pid", "uid", "command", "why")
    return [{key: safe_files.one_line(record[key]) if isinstance(record[key], str) else record[key]
             for key in keys if key in record} for record in ctx.history.supervisor_events(h.SECURITY_EVENT)]


def faults_table(ctx: CheckContext) -> list[dict[str, Any]]:
    landed = views.landings(ctx.history)
    missed = views.misses(ctx.history)
    out = []
    for fault in ctx.plan:
        records = landed.get(fault.id, [])
        landing = None
        if records:
            first = records[0]
            landing = {key: first.get(key) for key in ("rank", "attempt", "step", "phase", "index", "signal")}
            landing["ranks"] = sorted(views.landed_ranks(records))
            landing["action"] = first.get("action")
            observed = first.get("observed")
            if observed:  # a black-box landing: say how precise it was and what was seen when it went out
                landing["landing"] = "observed"
                landing["observed"] = {key: observed.get(key) for key in (
                    "latency_s", "delay_s", "window_open", "window", "last_iteration_logged", "tracker", "files")}
            else:
                landing["landing"] = "held" if first.get("held") else "wall-clock"
        row = {"planned": fault.to_dict(), "landed": landing}
        if fault.id in missed:
            row["missed"] = "; ".join(str(r.get("reason")) for r in missed[fault.id])
        out.append(row)
    return out


def _exceptions(attempt) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for record in attempt.events(h.EXCEPTION):
        seen.setdefault(record.get("summary", ""), {"rank": record.get("rank"), "summary": record.get("summary")})
    return list(seen.values())[:5]


def attempts_table(ctx: CheckContext) -> list[dict[str, Any]]:
    history = ctx.history
    outcomes = views.attempt_outcomes(history)
    rows = []
    for index in views.attempt_indices(history):
        attempt = views.attempt_by_index(history, index)
        loaded = views.loaded_record(attempt) if attempt else None
        first, last = views.step_range(attempt) if attempt else (None, None)
        row = {"index": index, "resumed_from": int(loaded["iteration"]) if loaded else None,
               "first_step": first, "last_step": last, "exit": outcomes.get(index)}
        raised = _exceptions(attempt) if attempt else []
        if raised:  # what the trainer itself reported dying of (a black-box trainer's traceback)
            row["exceptions"] = raised
        unparsed = list(attempt.events(h.PARSE_ERROR)) if attempt else []
        if unparsed:  # a followed trainer's line that looked like its own format but did not parse
            row["parse_errors"] = {"count": len(unparsed), "first": [
                {key: record.get(key) for key in ("rank", "line_number", "reason", "line")} for record in unparsed[:3]]}
        rows.append(row)
    return rows


def timings(ctx: CheckContext) -> dict[str, list[dict[str, Any]]]:
    """The tester's own latencies: how fast it noticed a death or hang, how long teardown took, and how long
    people waited from an attempt's end to the first step the next one completed."""
    history = ctx.history
    detection = [{"attempt": r.get("attempt"), "rank": r.get("rank"), "kind": "death",
                  "latency_s": r.get("detect_latency_s")} for r in history.supervisor_events(h.DEATH_DETECTED)]
    for record in history.supervisor_events(h.HANG_DETECTED):
        detection.append({"attempt": int(record["attempt"]), "rank": None, "kind": "hang",
                          "latency_s": views.hang_latency(history, record),
                          "idle_s": record.get("idle_s")})
    teardown = [{"attempt": r.get("attempt"), "duration_s": r.get("duration_s")}
                for r in history.supervisor_events(h.TEARDOWN)]
    ends = {int(r["attempt"]): r.get("mono") for r in history.supervisor_events(h.ATTEMPT_END)}
    restart = []
    for attempt in history.attempts:
        previous_end = ends.get(attempt.index - 1)
        step_ends = [r["mono"] for r in attempt.events(h.STEP_END) if r.get("mono") is not None]
        if previous_end is None or not step_ends:
            continue
        first = min(step_ends)
        restart.append({"attempt": attempt.index, "seconds": first - previous_end,
                        "first_step": min(int(r["step"]) for r in attempt.events(h.STEP_END)),
                        "breakdown": _restart_breakdown(history, attempt, previous_end, first)})
    return {"detection_latency_s": detection, "teardown_duration_s": teardown,
            "restart_to_first_resumed_step_s": restart, "recovery_s": recoveries(history)}


def recoveries(history) -> list[dict[str, Any]]:
    """Each recovery, whoever did it (restart.by): from the fault that ended an attempt to the moment the
    recovery layer noticed it, and to the first step the next attempt completed. One row per attempt after the
    first; an attempt that never completed a step has no first resumed step (None). `layer` says which layer
    recovered and `detected_by` which evidence times its detection (_detections)."""
    starts = {int(r["attempt"]): r for r in history.supervisor_events(h.ATTEMPT_START)}
    rows = []
    for attempt in history.attempts:
        previous, number = attempt.index - 1, attempt.index
        step_ends = [r["mono"] for r in attempt.events(h.STEP_END) if r.get("mono") is not None]
        if previous < 1:
            continue
        landed = [r for r in history.supervisor_events(h.FAULT_LANDED)
                  if r.get("attempt") == previous and r.get("mono") is not None]
        exits = [r["mono"] for r in history.supervisor_events(h.RANK_EXIT)
                 if r.get("attempt") == previous and r.get("mono") is not None]
        if landed:
            fault_id, origin = landed[-1].get("fault_id"), landed[-1]["mono"]
        elif exits:
            fault_id, origin = None, min(exits)  # a crash of the job's own (a restart loop): from its first exit
        else:
            continue
        start = starts.get(number) or {}
        layer, detected_by, noticed = _detections(history, start, previous, number)
        noticed = [mono for mono in noticed if mono >= origin]
        rows.append({"attempt": number, "by": start.get("by") or "chaos", "layer": layer, "fault_id": fault_id,
                     "detected_s": round(min(noticed) - origin, 4) if noticed else None,
                     "detected_by": detected_by,
                     "first_resumed_step_s": round(min(step_ends) - origin, 4) if step_ends else None})
    return rows


def _detections(history, start: dict, previous: int, number: int) -> tuple[str, str, list[float]]:
    """(layer, evidence, when it noticed) for the recovery that began attempt `number`. By chaos: its own death or
    hang detection. By the job's launcher: the first line the launcher wrote about it (chaos.supervisor.job_log),
    seen within the supervisor's poll of that output. By the job in-process (attempt_start in_process): the first
    line NVIDIA's in-process wrapper logged about it in any rank of the failed attempt (that it caught the
    exception, fn_ex, or was told to restart by a timeout or another rank's failure, term_ex: job_interrupted),
    stamped by the rank as it logged it (chaos's trainer) or by the follower as it read it (a job followed from its
    logs); without one, its re-entry line (job_reentered), else the first hello of the re-entered attempt (which
    comes only after the ranks rebuilt their process groups: the latest evidence, never too early)."""
    if (start.get("by") or "chaos") != "job":
        return "chaos", "death or hang detection", [r["mono"] for name in (h.DEATH_DETECTED, h.HANG_DETECTED)
                                                   for r in history.supervisor_events(name)
                                                   if r.get("attempt") == previous and r.get("mono") is not None]
    if not start.get("in_process"):
        return "launcher", "launcher log line", [r.get("seen_mono") for r in history.supervisor_events(h.JOB_RECOVERY)
                                                 if r.get("attempt") == previous and r.get("seen_mono") is not None]
    failed = views.attempt_by_index(history, previous)
    for event, kinds, evidence in ((h.JOB_INTERRUPTED, DETECTION_KINDS, "wrapper log line"),
                                   (h.JOB_REENTERED, None, "wrapper re-entry line")):
        lines = [r["mono"] for r in (failed.events(event) if failed else [])
                 if r.get("mono") is not None and (kinds is None or r.get("kind") in kinds)]
        if lines:
            return "in_process", evidence, lines
    return "in_process", "re-entered hello", [r["mono"] for r in history.supervisor_events(h.RANK_HELLO)
                                              if r.get("attempt") == number and r.get("mono") is not None]


DETECTION_KINDS = ("fn_ex", "term_ex")
"""The in-process wrapper's lines that say it noticed a failure (its restart_ex and exit_ex come after)."""


RESTART_STAGES = (("fork", "up to the zygote's last fork"), ("launch", "teardown and launch (chaos)"), ("interpreter", "interpreters up to the hello"),
                  ("imports", "imports"), ("process_groups", "rendezvous and process groups"),
                  ("model", "model and optimizer"), ("data", "datasets and index building"),
                  ("checkpoint_load", "checkpoint load"), ("first_step", "first resumed step"))
"""Where a restart's seconds go, in order; a stage the workload does not report is left out."""


def _restart_breakdown(history, attempt, previous_end: float, first_step_end: float) -> dict[str, float]:
    """Seconds per RESTART_STAGES stage, each ending when the slowest rank finished it (the job waits for
    it), measured from the previous attempt's end. The gpt3 workload reports every stage; a workload followed
    from its logs reports the launch, the checkpoint load and the first step."""
    marks: list[tuple[str, float]] = []
    starts = [r for r in history.supervisor_events(h.ATTEMPT_START) if r.get("attempt") == attempt.index]
    forks = [p["fork_mono"] for p in (starts[0].get("processes") or []) if isinstance(p, dict)
             and isinstance(p.get("fork_mono"), (int, float))] if starts else []
    if forks:  # restart.warm: fork: the ranks were forked from the run's zygote, not started as interpreters
        marks.append(("fork", max(forks)))
    if starts and "mono" in starts[0]:
        marks.append(("launch", starts[0]["mono"]))
    firsts = [records[0]["mono"] for records in attempt.ranks.values() if records and "mono" in records[0]]
    if firsts:
        marks.append(("interpreter", max(firsts)))
    for stage in ("imports", "process_groups", "model", "data"):
        times = [r["mono"] for r in attempt.events(h.STARTUP_PHASE) if r.get("phase") == stage]
        if times:
            marks.append((stage, max(times)))
    loaded = [r["mono"] for r in attempt.events(h.CHECKPOINT_LOADED) if r.get("mono") is not None]
    if loaded:
        marks.append(("checkpoint_load", max(loaded)))
    marks.append(("first_step", first_step_end))
    out, previous = {}, previous_end
    for stage, mono in marks:
        out[f"{stage}_s"] = round(max(0.0, mono - previous), 4)
        previous = max(previous, mono)
    return out


def write_report(report: dict[str, Any], run_dir: Path) -> Path:
    path = Path(run_dir) / REPORT_FILE
    # a new file renamed over the old: a reader never sees half a report, and a link planted under its name
    # is replaced, never written through
    safe_files.write_file(path, json.dumps(report, indent=1, default=str) + "\n", root=Path(run_dir))
    return path


def read_report(run_dir: Path) -> dict[str, Any]:
    """report.json of a run directory (no link followed, bounded size); ValueError when it is not a report."""
    data = safe_files.read_bytes(Path(run_dir) / REPORT_FILE, limit=safe_files.SMALL_FILE_LIMIT * 4, root=Path(run_dir))
    try:
        report = json.loads(data)
    except RecursionError:
        raise ValueError(f"{Path(run_dir) / REPORT_FILE}: nested too deeply to be a report") from None
    if not isinstance(report, dict):
        raise ValueError(f"{Path(run_dir) / REPORT_FILE}: expected a JSON object")
    return report
