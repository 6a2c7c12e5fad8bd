"""junit.xml for CI: one testsuite per run, one testcase per check. fail -> <failure>, error -> <error>,
skip -> <skipped>; the verdict, restarts and faults are suite properties.

Every text and attribute goes through safe_files.printable: a rank's output or a fault's evidence may hold
control characters (ESC, NUL), which would make the file invalid XML and reach a CI log's terminal."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from chaos import safe_files


def build_junit(report: dict[str, Any]) -> ET.Element:
    checks = report.get("checks", [])
    suite_name = _text(f"chaos.{report.get('scenario')}")
    suite = ET.Element("testsuite", {
        "name": suite_name,
        "tests": str(len(checks)),
        "failures": str(sum(c["status"] == "fail" for c in checks)),
        "errors": str(sum(c["status"] == "error" for c in checks)),
        "skipped": str(sum(c["status"] == "skip" for c in checks)),
    })
    properties = ET.SubElement(suite, "properties")
    _property(properties, "verdict", report.get("verdict"))
    _property(properties, "restarts", report.get("restarts"))
    _property(properties, "run_dir", report.get("run_dir"))
    for fault in report.get("faults", []):
        landed = fault.get("landed")
        value = "not landed" if landed is None else json.dumps(landed, sort_keys=True)
        _property(properties, f"fault.{safe_files.one_line(fault['planned']['id'])}", value)
    for number, event in enumerate(report.get("security_events") or []):  # another user's token carrier
        _property(properties, f"security_event.{number}", safe_files.one_line(json.dumps(event, sort_keys=True)))
    for check in checks:
        case = ET.SubElement(suite, "testcase", {"classname": suite_name, "name": _text(check["name"])})
        evidence = _text(json.dumps(check.get("evidence", {}), indent=1, default=str))
        detail = _text(check["detail"])
        if check["status"] == "fail":
            ET.SubElement(case, "failure", {"message": detail}).text = evidence
        elif check["status"] == "error":
            ET.SubElement(case, "error", {"message": detail}).text = evidence
        elif check["status"] == "skip":
            ET.SubElement(case, "skipped", {"message": detail})
        else:
            ET.SubElement(case, "system-out").text = detail
    return suite


def write_junit(report: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    tree = ET.ElementTree(build_junit(report))
    ET.indent(tree)
    data = ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True)
    safe_files.write_file(path, data, root=path.parent)  # replaced, never written through a planted link
    return path


def _text(value: Any) -> str:
    return safe_files.printable("" if value is None else value)


def _property(parent: ET.Element, name: str, value: Any) -> None:
    ET.SubElement(parent, "property", {"name": _text(name), "value": _text(value)})
