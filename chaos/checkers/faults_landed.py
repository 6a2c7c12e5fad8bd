"""Oracle 7: every planned fault landed where it was planned. A fault that did not land, or landed
elsewhere, means the run did not test what it claims: status `error` (unknown), never `pass` or `fail`.

Held landings (the probe stopped the rank at the point) are exact. Observed landings (an unmodified
trainer, chaos.supervisor.observed) pass when what was observed when the signal went out still matched the
trigger: its window was open (e.g. the next iteration not yet logged)."""

from __future__ import annotations

from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult

NAME = "faults_landed"


def check(ctx: CheckContext) -> CheckResult:
    if not ctx.plan:
        return CheckResult(NAME, "skip", "no fault was planned")
    landed = views.landings(ctx.history)
    missed = views.misses(ctx.history)
    rows, problems = [], []
    for fault in ctx.plan:
        records = landed.get(fault.id, [])
        row = {"fault_id": fault.id, "planned": _planned_place(fault), "landed": [_place(r) for r in records]}
        rows.append(row)
        if fault.id in missed:
            reasons = "; ".join(str(r.get("reason")) for r in missed[fault.id])
            row["missed"] = reasons
            problems.append(f"{fault.id} missed: {reasons}")
            continue
        if not records:
            problems.append(f"{fault.id} never landed (planned {_describe(row['planned'])})")
            continue
        wrong = _mismatches(fault, records)
        if wrong:
            problems.append(f"{fault.id} landed elsewhere than planned: {'; '.join(wrong)}")
    evidence = {"faults": rows}
    if problems:
        return CheckResult(NAME, "error", "the run proves nothing about these faults: " + "; ".join(problems), evidence)
    return CheckResult(NAME, "pass", f"all {len(ctx.plan)} planned fault(s) landed where planned", evidence)


def _planned_place(fault) -> dict:
    trigger = fault.trigger
    return {"attempt": trigger.attempt, "step": trigger.step, "phase": trigger.phase, "index": trigger.index,
            "ranks": list(fault.target.ranks), "action": fault.action.describe()}


def _place(record: dict) -> dict:
    place = {key: record.get(key) for key in ("attempt", "rank", "step", "phase", "index", "action", "signal")}
    observed = record.get("observed")
    if observed:
        place["landing"] = "observed"
        place["latency_s"] = observed.get("latency_s")
        place["window"] = observed.get("window")
    else:
        place["landing"] = "held" if record.get("held") else "wall-clock"
    return place


def _describe(place: dict) -> str:
    parts = [f"{key}={value}" for key, value in place.items() if value is not None]
    return ", ".join(parts)


def _mismatches(fault, records: list[dict]) -> list[str]:
    trigger = fault.trigger
    wrong = []
    for record in records:
        if record.get("attempt") is not None and int(record["attempt"]) != trigger.attempt:
            wrong.append(f"attempt {record['attempt']}, planned {trigger.attempt}")
        if trigger.step is not None and (record.get("step") is None or int(record["step"]) != trigger.step):
            wrong.append(f"step {record['step']}, planned {trigger.step}")
        if trigger.phase is not None and record.get("phase") != trigger.phase:
            wrong.append(f"phase {record.get('phase')}, planned {trigger.phase}")
        if trigger.index is not None and record.get("index") is not None and int(record["index"]) != trigger.index:
            wrong.append(f"index {record['index']}, planned {trigger.index}")
        observed = record.get("observed") or {}
        if observed and not observed.get("window_open", True):
            wrong.append(f"the signal went out after the trigger's window closed ({observed.get('window')}; "
                         f"{observed.get('latency_s')} s after the trigger was seen)")
    ranks = views.landed_ranks(records)
    if fault.target.ranks and (ranks or fault.action.kind == "signal") and ranks != set(fault.target.ranks):
        wrong.append(f"ranks {sorted(ranks)}, planned {sorted(fault.target.ranks)}")
    return sorted(set(wrong), key=wrong.index)
