"""The soak's own report, rewritten after every cycle: soak.json (machines), soak.html (people) and
junit.xml (CI: one test case per cycle, one per minimal reproducer)."""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from chaos import safe_files
from chaos.soak.stats import coverage_matrix, restart_statistics

SOAK_FORMAT = "chaos-soak/1"


def cycle_reports(out: Path, state: dict[str, Any]) -> list[dict[str, Any]]:
    reports = []
    for record in state.get("cycles", []):
        path = Path(out) / str(record.get("run_dir")) / "report.json"
        try:
            # no link followed, bounded size: a cycle's run directory is written by the job as well
            reports.append(json.loads(safe_files.read_bytes(path, limit=4 * safe_files.SMALL_FILE_LIMIT)))
        except (OSError, ValueError, RecursionError):
            reports.append({})  # a cycle without a readable report still counts by its verdict
    return reports


def build(out: Path, state: dict[str, Any], name: str) -> dict[str, Any]:
    reports = cycle_reports(out, state)
    cycles = state.get("cycles", [])
    verdicts = [c.get("verdict") for c in cycles]
    return {
        "format": SOAK_FORMAT,
        "scenario": name,
        "scenario_file": state.get("scenario"),
        "seed": state.get("seed"),
        "schedule": state.get("schedule"),
        "cycles_done": len(cycles),
        "verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts), key=str)},
        "elapsed_s": state.get("elapsed_s"),
        "stopped": state.get("stopped", ""),
        "coverage": coverage_matrix(reports),
        "restart_statistics": restart_statistics(reports),
        "cycles": cycles,
        "minimal_reproducers": [dict(c["minimal"], cycle=c["cycle"]) for c in cycles if c.get("minimal")],
    }


def write_all(out: Path, state: dict[str, Any], name: str) -> dict[str, Any]:
    out = Path(out)
    report = build(out, state, name)
    _atomic(out / "soak.json", json.dumps(report, indent=1, default=str) + "\n")
    _atomic(out / "soak.html", render_html(report))
    tree = ET.ElementTree(build_junit(report))
    ET.indent(tree)
    _atomic(out / "junit.xml", ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True))
    return report


def _atomic(path: Path, data: str | bytes) -> None:
    # a new temp file renamed over the target: never half a file, never a write through a planted link
    safe_files.write_file(path, data, root=path.parent)


def _printable_tree(element: ET.Element) -> ET.Element:
    """Every attribute and text made printable: check details and errors come from the cycles' runs (a
    control character would make the XML invalid and reach a CI log's terminal)."""
    for node in element.iter():
        node.attrib = {key: safe_files.printable(value) for key, value in node.attrib.items()}
        if node.text is not None:
            node.text = safe_files.printable(node.text)
    return element


def build_junit(report: dict[str, Any]) -> ET.Element:
    cycles = report["cycles"]
    minimal = report["minimal_reproducers"]
    suite = ET.Element("testsuite", {
        "name": f"chaos.soak.{report['scenario']}",
        "tests": str(len(cycles) + len(minimal)),
        "failures": str(sum(c["verdict"] == "fail" for c in cycles) + sum(bool(m.get("confirmed")) for m in minimal)),
        "errors": str(sum(c["verdict"] not in ("pass", "fail") for c in cycles)),
        "skipped": "0",
        "time": f"{report.get('elapsed_s') or 0:.3f}",
    })
    properties = ET.SubElement(suite, "properties")
    for key in ("seed", "cycles_done", "stopped"):
        ET.SubElement(properties, "property", {"name": key, "value": str(report.get(key))})
    ET.SubElement(properties, "property", {"name": "coverage", "value": json.dumps(report["coverage"]["counts"], sort_keys=True)})
    for cycle in cycles:
        case = ET.SubElement(suite, "testcase", {"classname": suite.get("name"), "name": f"cycle-{cycle['cycle']:03d}",
                                                 "time": f"{cycle.get('duration_s') or 0:.3f}"})
        detail = "; ".join(f"{c['name']}: {c['detail']}" for c in cycle.get("failing_checks", []))
        text = f"seed {cycle['seed']}; run dir {cycle['run_dir']}"
        if cycle["verdict"] == "fail":
            ET.SubElement(case, "failure", {"message": detail or "verdict fail"}).text = text
        elif cycle["verdict"] != "pass":
            ET.SubElement(case, "error", {"message": cycle.get("infrastructure_error") or detail or cycle["verdict"]}).text = text
        else:
            ET.SubElement(case, "system-out").text = text
    for item in minimal:
        case = ET.SubElement(suite, "testcase", {"classname": suite.get("name"), "name": f"minimal-{item['cycle']:03d}"})
        if item.get("confirmed"):
            ET.SubElement(case, "failure", {"message": f"reproduced: {item['command']}"}).text = item.get("faults")
        else:
            ET.SubElement(case, "skipped", {"message": f"flaky: did not fail again when re-run: {item['command']}"})
    return _printable_tree(suite)


def render_html(report: dict[str, Any]) -> str:
    e = lambda value: html.escape(safe_files.printable(value))  # noqa: E731
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>chaos soak: {e(report['scenario'])}</title><style>"
           "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
           ".pass{background:#d8f5d8}.fail{background:#f8d0d0}.error{background:#f8ecc0}"
           "td.zero{color:#bbb}</style></head><body>",
           f"<h1>chaos soak: {e(report['scenario'])}</h1>",
           f"<p>seed {e(report['seed'])}, {e(report['cycles_done'])} cycle(s), verdicts {e(report['verdicts'])}, "
           f"{float(report.get('elapsed_s') or 0):.0f} s. {e(report.get('stopped') or '')}</p>"]
    coverage = report["coverage"]
    out.append(f"<h2>Coverage: faults landed (phase x signal)</h2><p>{coverage['landed']} landed, "
               f"{coverage['not_landed']} planned but not landed</p><table><tr><th>phase</th>")
    out += [f"<th>{e(s)}</th>" for s in coverage["signals"]]
    out.append("</tr>")
    for phase in coverage["phases"]:
        row = coverage["counts"].get(phase, {})
        cells = "".join(f"<td class='{'zero' if not row.get(s) else ''}'>{row.get(s, 0)}</td>" for s in coverage["signals"])
        out.append(f"<tr><th>{e(phase)}</th>{cells}</tr>")
    out.append("</table><h2>Restarts</h2><table><tr><th></th><th>count</th><th>median</th><th>p95</th><th>max</th></tr>")
    for name, stats in report["restart_statistics"].items():
        cells = "".join(f"<td>{_number(stats.get(k))}</td>" for k in ("count", "median", "p95", "max"))
        out.append(f"<tr><th>{e(name)}</th>{cells}</tr>")
    out.append("</table>")
    if report["minimal_reproducers"]:
        out.append("<h2>Minimal reproducers</h2><ul>")
        for item in report["minimal_reproducers"]:
            state = "confirmed" if item.get("confirmed") else "FLAKY (passed when re-run)"
            out.append(f"<li>cycle {e(item['cycle'])}: <code>{e(item['command'])}</code> ({state}): {e(item.get('faults'))}</li>")
        out.append("</ul>")
    out.append("<h2>Cycles</h2><table><tr><th>cycle</th><th>seed</th><th>verdict</th><th>faults landed</th>"
               "<th>seconds</th><th>failing checks</th><th>run</th></tr>")
    for cycle in report["cycles"]:
        failing = "; ".join(f"{c['name']}: {c['detail']}" for c in cycle.get("failing_checks", []))
        out.append(f"<tr class='{e(cycle['verdict'])}'><td>{cycle['cycle']}</td><td>{cycle['seed']}</td>"
                   f"<td>{e(cycle['verdict'])}</td><td>{cycle.get('faults_landed')}/{cycle.get('faults_planned')}</td>"
                   f"<td>{_number(cycle.get('duration_s'))}</td><td style='text-align:left'>{e(failing)}</td>"
                   f"<td><a href='{e(cycle['run_dir'])}/report.html'>{e(cycle['run_dir'])}</a></td></tr>")
    out.append("</table></body></html>\n")
    return "\n".join(out)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
