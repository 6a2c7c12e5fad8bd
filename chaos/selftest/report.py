"""A selftest's reports: the table (bug -> verdict -> the checks that caught it, the first evidence), the score,
as summary.txt (also printed), selftest.json, junit.xml (one test case per bug) and selftest.html (linking each
bug's own run report). Every text from a run goes through safe_files.printable."""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from chaos import safe_files
from chaos.selftest import bugs as catalog
from chaos.selftest.outcome import CAUGHT, ERROR, INERT, MISSED, NOT_APPLICABLE, UNDECIDED

JSON_FILE, SUMMARY_FILE, JUNIT_FILE, HTML_FILE = "selftest.json", "summary.txt", "junit.xml", "selftest.html"
COLORS = {CAUGHT: "#d8f5d8", MISSED: "#f8d0d0", UNDECIDED: "#f8d0d0", ERROR: "#f8ecc0", INERT: "#eeeeee",
          NOT_APPLICABLE: "#eeeeee"}


def headline(result) -> str:
    score = result.score
    if result.stopped:
        return f"stopped: {result.stopped}"
    if not score.counted:
        return "no planted bug changed this job (every one inert or not applicable): the selftest proved nothing"
    missed = [o.bug for o in result.outcomes if o.verdict in (MISSED, UNDECIDED)]
    line = f"score {score} caught"
    line += "" if not missed else f"; not caught: {', '.join(missed)}"
    errors = [o.bug for o in result.outcomes if o.verdict == ERROR]
    if errors:
        line += f"; could not tell: {', '.join(errors)}"
    return line


def format_summary(result) -> str:
    lines = [f"chaos selftest {result.scenario}: {headline(result)}"]
    if result.control is not None:
        lines.append(f"control: {result.control.verdict} ({result.control.run_dir})")
    if result.outcomes:
        width = max(len(o.bug) for o in result.outcomes)
        lines.append(f"{'bug'.ljust(width)}  {'verdict'.ljust(14)}  caught by / why")
        for o in result.outcomes:
            checks = ", ".join(o.checks)
            why = safe_files.one_line(o.why, 240)
            lines.append(f"{o.bug.ljust(width)}  {o.verdict.ljust(14)}  " + (f"{checks}: {why}" if o.verdict == CAUGHT
                                                                             else why))
    lines.append(f"reports: {Path(result.out_dir) / HTML_FILE} (+ {JSON_FILE}, {JUNIT_FILE})")
    return "\n".join(lines)


def write_reports(result) -> None:
    out = Path(result.out_dir)
    data = result.to_dict()
    safe_files.write_file(out / JSON_FILE, json.dumps(data, indent=1, default=str) + "\n", root=out)
    safe_files.write_file(out / SUMMARY_FILE, format_summary(result) + "\n", root=out)
    tree = ET.ElementTree(build_junit(result))
    ET.indent(tree)
    safe_files.write_file(out / JUNIT_FILE, ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True),
                          root=out)
    safe_files.write_file(out / HTML_FILE, render_html(result, data), root=out)


def _text(value: Any) -> str:
    return safe_files.printable("" if value is None else value)


def build_junit(result) -> ET.Element:
    outcomes = result.outcomes
    name = _text(f"chaos.selftest.{result.scenario}")
    suite = ET.Element("testsuite", {
        "name": name, "tests": str(len(outcomes)),
        "failures": str(sum(o.verdict in (MISSED, UNDECIDED) for o in outcomes)),
        "errors": str(sum(o.verdict == ERROR for o in outcomes) + bool(result.stopped)),
        "skipped": str(sum(o.verdict in (INERT, NOT_APPLICABLE) for o in outcomes))})
    properties = ET.SubElement(suite, "properties")
    for key, value in (("score", str(result.score)), ("caught", result.score.caught),
                       ("counted", result.score.counted), ("min_score", result.min_score),
                       ("control", result.control.verdict if result.control else None),
                       ("stopped", result.stopped or "")):
        ET.SubElement(properties, "property", {"name": key, "value": _text(value)})
    if result.stopped:
        case = ET.SubElement(suite, "testcase", {"classname": name, "name": "control"})
        ET.SubElement(case, "error", {"message": _text(result.stopped)})
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", {"classname": name, "name": _text(o.bug)})
        message = _text(f"{o.verdict}: {o.why}")
        if o.verdict in (MISSED, UNDECIDED):
            ET.SubElement(case, "failure", {"message": message}).text = _text("\n".join(o.acted))
        elif o.verdict == ERROR:
            ET.SubElement(case, "error", {"message": message})
        elif o.verdict in (INERT, NOT_APPLICABLE):
            ET.SubElement(case, "skipped", {"message": message})
        else:
            ET.SubElement(case, "system-out").text = message
    return suite


def render_html(result, data: dict[str, Any]) -> str:
    e = lambda value: html.escape(_text(value))  # noqa: E731
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>chaos selftest: {e(result.scenario)}</title><style>"
           "body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}"
           "table{border-collapse:collapse;width:100%;font-size:13px}td,th{border:1px solid #ddd;padding:4px 6px;"
           "text-align:left;vertical-align:top}th{background:#f5f5f5}</style></head><body>",
           f"<h1>chaos selftest: {e(result.scenario)}</h1>",
           f"<p><b>{e(headline(result))}</b></p>"]
    control = data.get("control")
    if control:
        out.append(f"<p>control run: {e(control['verdict'])} (<a href='control/report.html'>report</a>); golden "
                   f"{e(control.get('golden'))}; {e(data['seconds'])} s in all</p>")
    out.append("<p>Each planted bug ran the scenario's faults against the control's golden. <i>caught</i>: a check "
               "failed; <i>missed</i>: the bug changed the job and every check passed; <i>inert</i>: the job's losses "
               "and checkpoints equal the control's (the bug did not exercise this job); <i>not applicable</i>: it "
               "cannot apply here.</p><table><tr><th>bug</th><th>verdict</th><th>caught by</th><th>evidence / why</th>"
               "<th>what the bug did</th><th>run</th></tr>")
    for o in result.outcomes:
        run = (f"<a href='bugs/{e(o.bug)}/report.html'>report</a>" if o.run_dir else "-")
        out.append(f"<tr style='background:{COLORS.get(o.verdict, '#fff')}'><td><b>{e(o.bug)}</b></td>"
                   f"<td>{e(o.verdict)}</td><td>{e(', '.join(o.checks))}</td><td>{e(o.why)}</td>"
                   f"<td>{e('; '.join(o.acted[:4]))}</td><td>{run}</td></tr>")
    out.append("</table><h2>The bugs</h2><table><tr><th>bug</th><th>what it does</th><th>what it stands for</th></tr>")
    for bug in catalog.BUGS:
        out.append(f"<tr><td>{e(bug.name)}</td><td>{e(bug.does)}</td><td>{e(bug.stands_for)}</td></tr>")
    out.append("</table></body></html>\n")
    return "\n".join(out)
