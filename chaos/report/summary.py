"""The few lines a person reads in a terminal: verdict, where the faults landed, restarts, what failed
(with the checker's own words), and where the evidence is."""

from __future__ import annotations

from typing import Any

from chaos.plan import Action

MARK = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIP"}


def format_summary(report: dict[str, Any]) -> str:
    checks = report.get("checks", [])
    counts: dict[str, int] = {}
    for check in checks:
        counts[check["status"]] = counts.get(check["status"], 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [f"chaos: {MARK.get(report.get('verdict'), str(report.get('verdict')).upper())}  "
             f"{report.get('scenario')}  ({len(checks)} checks: {tally or 'none'})"]
    infra = (report.get("extra") or {}).get("infrastructure_error")
    if infra:
        lines.append(f"  infrastructure: {infra}")
    for fault in report.get("faults", []):
        lines.append("  " + _fault_line(fault))
    attempts = report.get("attempts", [])
    resumed = ", ".join(f"attempt {a['index']} <- iter {a['resumed_from']}" for a in attempts[1:]
                        if a.get("resumed_from") is not None)
    lines.append(f"  restarts: {report.get('restarts', 0)} of {report.get('max_restarts', '?')}"
                 + (f" ({resumed})" if resumed else ""))
    for attempt in attempts if report.get("verdict") != "pass" else []:
        # a survivor's "connection reset" after a killed peer is expected: the trainer's own words matter
        # when something went wrong
        for raised in attempt.get("exceptions", [])[:2]:
            lines.append(f"  attempt {attempt['index']} rank {raised.get('rank')} raised: {raised.get('summary')}")
        unparsed = attempt.get("parse_errors")
        if unparsed:
            first = unparsed["first"][0]
            lines.append(f"  attempt {attempt['index']}: {unparsed['count']} log line(s) did not parse (first: rank "
                         f"{first.get('rank')} line {first.get('line_number')}: {first.get('reason')})")
    golden = report.get("golden") or {}
    if golden.get("path"):
        lines.append(f"  golden: {golden['path']} ({golden.get('mode', 'exact')})")
    if golden.get("rule"):
        lines.append(f"  rule: {golden['rule']}")
    for check in checks:
        if check["status"] in ("fail", "error"):
            lines.append(f"  {MARK[check['status']]} {check['name']}: {check['detail']}")
    lines.append(f"  run dir: {report.get('run_dir')}")
    return "\n".join(lines)


def _fault_line(fault: dict[str, Any]) -> str:
    planned = fault["planned"]
    action = Action(**planned["action"]).describe()
    landed = fault.get("landed")
    if landed is None:
        why = fault.get("missed") or "no fault_landed record"
        return f"fault {planned['id']} {action}: NOT LANDED ({why})"
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
    return (f"fault {planned['id']} {action} -> rank {','.join(str(r) for r in ranks)}, attempt {landed.get('attempt')}, "
            f"{where}{how}")
