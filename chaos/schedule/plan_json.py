"""plan.json: a plan (chaos.plan.PlannedFault objects) as JSON text and back, for the run directory and replay."""

from __future__ import annotations

import json
from typing import Any, Mapping

from chaos.errors import InputError
from chaos.plan import PlannedFault
from chaos.safe_files import check_identifier

PLAN_FORMAT = "chaos-plan/1"


def plan_to_json(plan: tuple[PlannedFault, ...] | list[PlannedFault]) -> str:
    """The plan as JSON text for `plan.json` in the run directory; plan_from_json reads it back equal."""
    return json.dumps({"format": PLAN_FORMAT, "faults": [fault.to_dict() for fault in plan]}, indent=2) + "\n"


def plan_from_json(data: str | bytes | Mapping[str, Any] | list, source: str = "plan.json") -> tuple[PlannedFault, ...]:
    """Reads a stored plan (JSON text or the parsed object) for replay; a damaged one is an InputError."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as error:
            raise InputError(source, f"line {error.lineno}", f"invalid JSON: {error.msg}") from None
        except (RecursionError, UnicodeDecodeError) as error:
            why = "nested too deeply" if isinstance(error, RecursionError) else "not UTF-8"
            raise InputError(source, "", f"invalid JSON: {why}") from None
    faults = data.get("faults") if isinstance(data, Mapping) else data
    if isinstance(data, Mapping) and data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
        raise InputError(source, "format", f"expected {PLAN_FORMAT!r}, got {data.get('format')!r}")
    if not isinstance(faults, list):
        raise InputError(source, "faults", "expected a list of planned faults")
    plan = []
    for i, item in enumerate(faults):
        # an id becomes part of file and cgroup names and a line of the summary: a newline or an escape
        # sequence in one (a plan.json prepared by someone else) must not reach them
        check_identifier(item.get("id") if isinstance(item, Mapping) else None, source, f"faults[{i}].id")
        try:
            plan.append(PlannedFault.from_dict(item))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(source, f"faults[{i}]", f"not a planned fault ({type(error).__name__}: {error})") from None
    return tuple(plan)
