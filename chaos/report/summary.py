"""The few lines a person reads in a terminal: verdict, where the faults landed, restarts, what failed
(with the checker's own words), and where the evidence is.

Much of it comes from the run directory or a rank (fault ids, a trainer's exception, a log line that did not
parse, a check's evidence): each such piece is shown on its own line with control characters and newlines
escaped (safe_files.one_line), so no text from there can move the cursor, recolour the terminal or forge a
line of the summary ("chaos: PASS")."""

from __future__ import annotations

from typing import Any

from chaos.faults import action_from_dict
from chaos.safe_files import one_line

MARK = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIP"}


def format_summary(report: dict[str, Any]) -> str:
    checks = report.get("checks", [])
    counts: dict[str, int] = {}
    for check in checks:
        counts[check["status"]] = counts.get(check["status"], 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [f"chaos: {MARK.get(report.get('verdict'), one_line(str(report.get('verdict')).upper()))}  "
             f"{one_line(report.get('scenario'))}  ({len(checks)} checks: {one_line(tally or 'none')})"]
    infra = (report.get("extra") or {}).get("infrastructure_error")
    if infra:
        lines.append(f"  infrastructure: {one_line(infra, limit=2000)}")
    for fault in report.get("faults", []):
        lines.append("  " + _fault_line(fault))
    attempts = report.get("attempts", [])
    resumed = ", ".join(f"attempt {a['index']} <- iter {a['resumed_from']}" for a in attempts[1:]
                        if a.get("resumed_from") is not None)
    lines.append(f"  restarts: {report.get('restarts', 0)} of {report.get('max_restarts', '?')}"
                 + (f" ({resumed})" if resumed else ""))
    recoveries = (report.get("timings") or {}).get("recovery_s") or []
    if recoveries:  # how fast each recovery was, by whoever did it: what a recovery layer's owner tunes
        parts = [f"{one_line(r.get('fault_id') or 'crash')} "
                 f"{'?' if r.get('detected_s') is None else format(r['detected_s'], '.2f')}/"
                 f"{'never' if r.get('first_resumed_step_s') is None else format(r['first_resumed_step_s'], '.2f')}"
                 for r in recoveries]
        who, layer = recoveries[0]["by"], recoveries[0].get("layer")
        if layer and layer != who:  # which of the job's layers: its launcher or its in-process restart
            who = f"{who} ({str(layer).replace('_', '-')})"
        lines.append(f"  recovery by {one_line(who)} (fault -> detected / -> first resumed step, s): "
                     + ", ".join(parts))
    strangers = report.get("security_events") or []
    if strangers:  # another user's process held the run's token: not the job's, not signalled, but worth knowing
        first = strangers[0]
        lines.append(f"  SECURITY: {len(strangers)} process(es) of other users carried this run's token (not "
                     f"signalled, not counted against the job; first: pid {one_line(first.get('pid'))} uid "
                     f"{one_line(first.get('uid'))}: {one_line(first.get('command'), limit=120)}); see report.json")
    for attempt in attempts if report.get("verdict") != "pass" else []:
        # a survivor's "connection reset" after a killed peer is expected: the trainer's own words matter
        # when something went wrong
        for raised in attempt.get("exceptions", [])[:2]:
            lines.append(f"  attempt {attempt['index']} rank {one_line(raised.get('rank'))} raised: "
                         f"{one_line(raised.get('summary'))}")
        unparsed = attempt.get("parse_errors")
        if unparsed:
            first = unparsed["first"][0]
            lines.append(f"  attempt {attempt['index']}: {unparsed['count']} log line(s) did not parse (first: rank "
                         f"{one_line(first.get('rank'))} line {one_line(first.get('line_number'))}: "
                         f"{one_line(first.get('reason'))})")
    golden = report.get("golden") or {}
    if golden.get("path"):
        lines.append(f"  golden: {one_line(golden['path'])} ({one_line(golden.get('mode', 'exact'))})")
    if golden.get("rule"):
        lines.append(f"  rule: {one_line(golden['rule'])}")
    for check in checks:
        if check["status"] in ("fail", "error"):
            lines.append(f"  {MARK[check['status']]} {one_line(check['name'])}: {one_line(check['detail'], limit=2000)}")
    lines.append(f"  run dir: {one_line(report.get('run_dir'))}")
    return "\n".join(lines)


def _fault_line(fault: dict[str, Any]) -> str:
    planned = fault["planned"]
    action = action_from_dict(planned["action"]).describe()
    landed = fault.get("landed")
    if landed is None:
        why = fault.get("missed") or "no fault_landed record"
        return f"fault {one_line(planned['id'])} {one_line(action)}: NOT LANDED ({one_line(why)})"
    ranks = landed.get("ranks") or [landed.get("rank")]
    where = f"step {landed.get('step')} {landed.get('phase') or ''}".rstrip()
    if landed.get("index") is not None:
        where += f" #{landed['index']}"
    if planned["trigger"].get("delay_s"):
        where += f" +{planned['trigger']['delay_s']}s"
    how = ""
    observed = landed.get("observed")
    if observed:
        how = f" (observed, signal {observed.get('latency_s', 0) * 1000:.1f} ms after the trigger was seen)"
    process = planned["target"].get("process", "rank")
    beside = f"'s {one_line(process).replace('_', ' ')}" if process != "rank" else ""
    return (f"fault {one_line(planned['id'])} {one_line(action)} -> rank {one_line(','.join(str(r) for r in ranks))}"
            f"{beside}, attempt {one_line(landed.get('attempt'))}, {one_line(where)}{how}")
