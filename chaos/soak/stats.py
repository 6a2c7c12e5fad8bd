"""What a soak covered and how fast the tester recovered, aggregated over the cycles' report.json files.

Reads only plain report dicts (chaos.report.model) and is defensive about every key: a cycle that died
before its report was complete still counts for what it has.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

from chaos.faults import action_from_dict
from chaos.faults.signals import SIGNALS
from chaos.probe import SAVE_PHASES, STEP_PHASES

WALL_CLOCK = "wall-clock"
"""The coverage row of faults triggered by time rather than at a probe point."""
PHASE_ORDER = ("iteration",) + STEP_PHASES + SAVE_PHASES + ("checkpoint.load", WALL_CLOCK)
"""Rows in this order (probe points, then the black-box `iteration`); other phases follow, sorted."""


def coverage_matrix(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """phase x signal -> how many faults landed there; plus the planned faults that never landed."""
    counts: dict[str, dict[str, int]] = {}
    landed_total = not_landed = 0
    for report in reports:
        for fault in report.get("faults") or []:
            landed = fault.get("landed")
            if not landed:
                not_landed += 1
                continue
            landed_total += 1
            phase = landed.get("phase") or WALL_CLOCK
            signal = landed.get("signal") or _planned_action(fault.get("planned") or {})
            row = counts.setdefault(phase, {})
            row[signal] = row.get(signal, 0) + 1
    phases = [p for p in PHASE_ORDER if p in counts] + sorted(p for p in counts if p not in PHASE_ORDER)
    seen_signals = {s for row in counts.values() for s in row}
    signals = [s for s in SIGNALS if s in seen_signals] + sorted(s for s in seen_signals if s not in SIGNALS)
    return {"phases": phases, "signals": signals, "counts": counts, "landed": landed_total, "not_landed": not_landed}


def _planned_action(planned: dict[str, Any]) -> str:
    try:
        return action_from_dict(planned["action"]).describe()
    except (KeyError, TypeError, ValueError):
        return "?"


def restart_statistics(reports: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median / p95 / max of the tester's own latencies and of the steps lost per fault."""
    detection, teardown, restart, lost = [], [], [], []
    for report in reports:
        timings = report.get("timings") or {}
        detection += _numbers(timings.get("detection_latency_s"), "latency_s")
        teardown += _numbers(timings.get("teardown_duration_s"), "duration_s")
        restart += _numbers(timings.get("restart_to_first_resumed_step_s"), "seconds")
        for check in report.get("checks") or []:
            if check.get("name") == "steps_lost":
                lost += _numbers((check.get("evidence") or {}).get("faults"), "steps_lost")
    return {"detection_s": summarize(detection), "teardown_s": summarize(teardown),
            "restart_to_first_resumed_step_s": summarize(restart), "steps_lost": summarize(lost)}


def _numbers(rows: Any, key: str) -> list[float]:
    out = []
    for row in rows if isinstance(rows, list) else []:
        value = row.get(key) if isinstance(row, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


def summarize(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "median": None, "p95": None, "max": None}
    return {"count": len(values), "median": statistics.median(values), "p95": percentile(values, 95),
            "max": max(values)}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: always a value that was measured (p95 of 3 samples is the largest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
