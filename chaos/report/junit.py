"""junit.xml for CI: one testsuite per run, one testcase per check. fail -> <failure>, error -> <error>,
skip -> <skipped>; the verdict, restarts and faults are suite properties."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def build_junit(report: dict[str, Any]) -> ET.Element:
    checks = report.get("checks", [])
    suite_name = f"chaos.{report.get('scenario')}"
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
        _property(properties, f"fault.{fault['planned']['id']}", value)
    for check in checks:
        case = ET.SubElement(suite, "testcase", {"classname": suite_name, "name": check["name"]})
        evidence = json.dumps(check.get("evidence", {}), indent=1, default=str)
        if check["status"] == "fail":
            ET.SubElement(case, "failure", {"message": check["detail"]}).text = evidence
        elif check["status"] == "error":
            ET.SubElement(case, "error", {"message": check["detail"]}).text = evidence
        elif check["status"] == "skip":
            ET.SubElement(case, "skipped", {"message": check["detail"]})
        else:
            ET.SubElement(case, "system-out").text = check["detail"]
    return suite


def write_junit(report: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    tree = ET.ElementTree(build_junit(report))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path


def _property(parent: ET.Element, name: str, value: Any) -> None:
    ET.SubElement(parent, "property", {"name": name, "value": "" if value is None else str(value)})
