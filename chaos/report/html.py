"""report.html: one self-contained page (inline CSS, inline hand-written SVG, no script, no fonts, no
network) with the loss curves (golden vs every attempt, fault and commit markers), a per-rank timeline per
attempt and the checks with their evidence."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from chaos import history as h
from chaos import safe_files
from chaos.checkers import views
from chaos.comparison import tolerance_for, value_matches
from chaos.faults import action_from_dict
from chaos.report.divergence import difference_svg, state_table
from chaos.history import RunHistory, load_run_history

HTML_FILE = "report.html"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
STATE_COLORS = {"running": "#4c9be8", "held": "#f0ad4e", "signalled": "#d9534f", "dead": "#999999",
                "torn down": "#6f42c1"}
STATUS_COLORS = {"pass": "#2e7d32", "fail": "#c62828", "error": "#ef6c00", "skip": "#757575"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px} .verdict{padding:2px 10px;border-radius:4px;color:#fff}
table{border-collapse:collapse;width:100%;font-size:13px} td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f5f5f5} pre{margin:0;font-size:11px;white-space:pre-wrap;max-height:320px;overflow:auto}
.status{font-weight:bold} svg{background:#fff;border:1px solid #eee} .legend span{margin-right:14px;font-size:12px}
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
"""


def _e(value: Any) -> str:
    # printable: text from a run directory or a rank (fault ids, evidence, a trainer's words) keeps no
    # control character, which a browser would not show and XML-minded tools refuse
    return html.escape(safe_files.printable("" if value is None else value))


# ---- the loss plot -----------------------------------------------------------------------------------------
def loss_svg(report: dict[str, Any], golden_metrics: dict | None, history: RunHistory | None,
             width: int = 860, height: int = 340) -> str:
    golden = {int(s): float(v) for s, v in ((golden_metrics or {}).get("lm loss") or {}).items()}
    # A point is marked off by the rule the golden comparison used: bitwise (exact) or Megatron's tolerance.
    golden_info = report.get("golden") or {}
    mode = golden_info.get("mode") or "exact"
    rtol = tolerance_for("lm loss", golden_info.get("tolerance"), mode)
    series: list[tuple[str, dict[int, float]]] = []
    if history is not None:
        for attempt in history.attempts:
            values = {int(s): float(v) for s, v in views.attempt_series(attempt, "lm_loss").items()}
            if values:
                series.append((f"attempt {attempt.index}", values))
    elif report.get("losses"):
        series.append(("effective", {int(s): float(v) for s, v in report["losses"].items()}))
    points = [v for _, values in series for v in values.values()] + list(golden.values())
    steps = [s for _, values in series for s in values] + list(golden)
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text x="10" y="25">no loss values</text></svg>'
    left, right, top, bottom = 60, 20, 20, 40
    x_max = max(steps + [int(report.get("train_iters") or 1)])
    y_lo, y_hi = min(points), max(points)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def x(step: float) -> float:
        return left + (step - 1) / max(x_max - 1, 1) * (width - left - right)

    def y(value: float) -> float:
        return top + (y_hi - value) / (y_hi - y_lo) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="lm loss per step">']
    parts.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>')
    tick_every = max(1, x_max // 12)
    for step in range(1, x_max + 1, tick_every):
        parts.append(f'<text x="{x(step):.1f}" y="{height - bottom + 15}" font-size="10" text-anchor="middle">{step}</text>')
    for k in range(5):
        value = y_lo + (y_hi - y_lo) * k / 4
        parts.append(f'<text x="{left - 5}" y="{y(value) + 3:.1f}" font-size="10" text-anchor="end">{value:.3f}</text>')
        parts.append(f'<line x1="{left}" y1="{y(value):.1f}" x2="{width - right}" y2="{y(value):.1f}" stroke="#eee"/>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 5}" font-size="11" text-anchor="middle">step</text>')
    for commit in report.get("commits", []):
        cx = x(int(commit["iteration"]))
        parts.append(f'<line x1="{cx:.1f}" y1="{top}" x2="{cx:.1f}" y2="{height - bottom}" stroke="#2ca02c" '
                     f'stroke-dasharray="2,3"><title>checkpoint {commit["iteration"]} committed '
                     f'(attempt {commit.get("attempt")})</title></line>')
    for fault in report.get("faults", []):
        landed = fault.get("landed")
        if not landed or landed.get("step") is None:
            continue
        fx = x(int(landed["step"]))
        fault_id = fault["planned"]["id"]
        parts.append(f'<line x1="{fx:.1f}" y1="{top}" x2="{fx:.1f}" y2="{height - bottom}" stroke="#d62728" '
                     f'stroke-width="1.5"><title>{_e(fault_id)}: {_e(landed.get("signal") or landed.get("action"))} '
                     f'at step {landed["step"]} {_e(landed.get("phase"))}</title></line>')
        parts.append(f'<text x="{fx + 2:.1f}" y="{top + 10}" font-size="10" fill="#d62728">{_e(fault_id)}</text>')
    if golden:
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in sorted(golden.items()))
        parts.append(f'<polyline points="{path}" fill="none" stroke="#000" stroke-width="2.5" opacity="0.35"/>')
    for n, (name, values) in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in sorted(values.items()))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.3"/>')
        for step, value in sorted(values.items()):
            off = step in golden and not value_matches(golden[step], value, mode, rtol)
            parts.append(f'<circle cx="{x(step):.1f}" cy="{y(value):.1f}" r="{4 if off else 2.5}" '
                         f'fill="{"#d62728" if off else color}"><title>{_e(name)} step {step}: {value!r}'
                         f'{f" (golden {golden[step]!r})" if golden and step in golden else ""}</title></circle>')
    parts.append("</svg>")
    legend = ['<div class="legend"><span><i class="swatch" style="background:#000;opacity:.35"></i>golden</span>']
    for n, (name, _) in enumerate(series):
        legend.append(f'<span><i class="swatch" style="background:{PALETTE[n % len(PALETTE)]}"></i>{_e(name)}</span>')
    legend.append('<span><i class="swatch" style="background:#d62728"></i>fault (landed step)</span>'
                  '<span><i class="swatch" style="background:#2ca02c"></i>checkpoint commit</span></div>')
    return "".join(parts) + "".join(legend)


# ---- the timeline -------------------------------------------------------------------------------------------
def rank_segments(history: RunHistory, index: int) -> tuple[dict[int, list[tuple[str, float, float]]], float, float]:
    """rank -> [(state, start, end)] in monotonic seconds, and the attempt's [start, end] window."""
    attempt = views.attempt_by_index(history, index)
    sup = [r for r in history.supervisor if r.get("attempt") == index and r.get("mono") is not None]
    monos = [r["mono"] for r in sup]
    if attempt is not None:
        monos += [rec["mono"] for records in attempt.ranks.values() for rec in records if rec.get("mono") is not None]
    if not monos:
        return {}, 0.0, 1.0
    begin, end = min(monos), max(monos)
    attempt_end = next((r["mono"] for r in sup if r["event"] == h.ATTEMPT_END), end)
    teardowns = [r for r in sup if r["event"] == h.TEARDOWN]
    ranks = set(attempt.ranks) if attempt else set()
    ranks |= {int(r["rank"]) for r in sup if r.get("rank") is not None and r["event"] in (h.RANK_EXIT, h.FAULT_LANDED)}
    out: dict[int, list[tuple[str, float, float]]] = {}
    for rank in sorted(ranks):
        records = attempt.ranks.get(rank, []) if attempt else []
        starts = [r["mono"] for r in records if r["event"] == h.START]
        exit_at = next((r["mono"] for r in sup if r["event"] == h.RANK_EXIT and r.get("rank") == rank), None)
        start = starts[0] if starts else begin
        alive_until = exit_at if exit_at is not None else (max([r["mono"] for r in records], default=start)
                                                           if not teardowns else attempt_end)
        segments = [("running", start, alive_until)]
        for record in records:
            if record["event"] == h.HELD:
                released = next((r["mono"] for r in records if r["event"] == h.RELEASED
                                 and r.get("fault_id") == record.get("fault_id")), alive_until)
                segments.append(("held", record["mono"], released))
        for landing in (r for r in sup if r["event"] == h.FAULT_LANDED and r.get("rank") == rank):
            segments.append(("signalled", landing["mono"], exit_at if exit_at is not None else alive_until))
        for teardown in teardowns:
            finished = teardown["mono"]
            began = finished - float(teardown.get("duration_s") or 0)
            if exit_at is None or exit_at > began:
                segments.append(("torn down", began, finished))
        if exit_at is not None and exit_at < attempt_end:
            segments.append(("dead", exit_at, attempt_end))
        out[rank] = [(state, a, max(a, b)) for state, a, b in segments]
    return out, begin, max(end, attempt_end)


def timeline_svg(history: RunHistory, index: int, width: int = 860) -> str:
    segments, begin, end = rank_segments(history, index)
    if not segments:
        return ""
    left, right, row = 60, 20, 22
    height = 30 + row * len(segments)
    span = max(end - begin, 1e-6)

    def x(t: float) -> float:
        return left + (t - begin) / span * (width - left - right)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="attempt {index} timeline">']
    for n, (rank, items) in enumerate(sorted(segments.items())):
        top = 8 + n * row
        parts.append(f'<text x="{left - 6}" y="{top + 12}" font-size="11" text-anchor="end">rank {rank}</text>')
        for state, a, b in items:
            inset = 0 if state in ("running", "dead") else 3
            parts.append(f'<rect x="{x(a):.1f}" y="{top + inset}" width="{max(x(b) - x(a), 1.5):.1f}" '
                         f'height="{row - 6 - 2 * inset}" fill="{STATE_COLORS[state]}"><title>rank {rank} {state}: '
                         f'{a - begin:.2f}s to {b - begin:.2f}s</title></rect>')
    parts.append(f'<text x="{left}" y="{height - 4}" font-size="10">0 s</text>'
                 f'<text x="{width - right}" y="{height - 4}" font-size="10" text-anchor="end">{span:.2f} s</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---- the page --------------------------------------------------------------------------------------------
def restart_table(restarts: list[dict[str, Any]]) -> str:
    """Where each restart's seconds went (report.model.RESTART_STAGES), one row per restarted attempt."""
    from chaos.report.model import RESTART_STAGES

    if not restarts:
        return ""
    stages = [(key, label) for key, label in RESTART_STAGES
              if any(f"{key}_s" in (r.get("breakdown") or {}) for r in restarts)]
    head = "".join(f"<th>{_e(label)}</th>" for _, label in stages)
    rows = []
    for restart in restarts:
        parts = restart.get("breakdown") or {}
        cells = "".join(f"<td>{parts[f'{key}_s']:.2f}</td>" if f"{key}_s" in parts else "<td></td>"
                        for key, _ in stages)
        rows.append(f"<tr><td>{_e(restart.get('attempt'))}</td><td>{restart.get('seconds', 0):.2f}</td>{cells}</tr>")
    return ("<h2>Restarts: where the seconds went</h2><table><tr><th>attempt</th><th>to first resumed step (s)</th>"
            f"{head}</tr>{''.join(rows)}</table>")


def recovery_table(recoveries: list[dict[str, Any]]) -> str:
    """Each recovery (report.model.recoveries): fault to detection to the first resumed step."""
    if not recoveries:
        return ""
    rows = "".join(
        f"<tr><td>{_e(r.get('attempt'))}</td><td>{_e(r.get('by'))}</td><td>{_e(r.get('layer') or '')}</td>"
        f"<td>{_e(r.get('fault_id') or 'crash')}</td>"
        f"<td>{'' if r.get('detected_s') is None else format(r['detected_s'], '.2f')}</td>"
        f"<td>{_e(r.get('detected_by') or '')}</td>"
        f"<td>{'never' if r.get('first_resumed_step_s') is None else format(r['first_resumed_step_s'], '.2f')}</td>"
        "</tr>" for r in recoveries)
    return ("<h2>Recoveries: fault to detection to first resumed step</h2><table><tr><th>attempt</th><th>by</th>"
            "<th>layer</th><th>fault</th><th>detected (s)</th><th>detected by</th><th>first resumed step (s)</th>"
            f"</tr>{rows}</table>")


def render_html(report: dict[str, Any], golden_metrics: dict | None = None, history: RunHistory | None = None) -> str:
    verdict = report.get("verdict", "?")
    color = STATUS_COLORS.get(verdict, "#ef6c00")
    out = ["<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
           f"<title>chaos: {_e(report.get('scenario'))} — {_e(verdict)}</title><style>{CSS}</style></head><body>",
           f"<h1>{_e(report.get('scenario'))} <span class=\"verdict\" style=\"background:{color}\">{_e(verdict).upper()}"
           f"</span></h1>",
           f"<p>run dir <code>{_e(report.get('run_dir'))}</code> · restarts {_e(report.get('restarts'))} · golden "
           f"<code>{_e((report.get('golden') or {}).get('path'))}</code> ({_e((report.get('golden') or {}).get('mode'))})</p>"]
    infra = (report.get("extra") or {}).get("infrastructure_error")
    if infra:
        out.append(f"<p><b>infrastructure error:</b> {_e(infra)}</p>")
    golden_info = report.get("golden") or {}
    if golden_info.get("rule"):
        out.append(f"<p><b>comparison rule:</b> {_e(golden_info['rule'])}<br><b>checkpoint state:</b> "
                   f"{_e(golden_info.get('state_rule'))}</p>")
    out.append("<h2>Loss: golden vs every attempt</h2>")
    out.append(loss_svg(report, golden_metrics, history))
    differences = difference_svg(report, golden_metrics, history)
    if differences:
        out.append("<h2>Distance from the golden per step (lm loss, relative, log scale)</h2>")
        out.append(differences)
    out.append(state_table(report))
    out.append("<h2>Checks</h2><table class=\"checks\"><tr><th>check</th><th>status</th><th>detail</th>"
               "<th>evidence</th></tr>")
    for check in report.get("checks", []):
        evidence = json.dumps(check.get("evidence", {}), indent=1, default=str)
        out.append(f"<tr><td>{_e(check['name'])}</td><td class=\"status\" style=\"color:"
                   f"{STATUS_COLORS.get(check['status'], '#000')}\">{_e(check['status'])}</td>"
                   f"<td>{_e(check['detail'])}</td><td><details><summary>evidence</summary><pre>{_e(evidence)}</pre>"
                   f"</details></td></tr>")
    out.append("</table>")
    out.append("<h2>Faults</h2><table><tr><th>id</th><th>planned</th><th>landed</th></tr>")
    for fault in report.get("faults", []):
        planned = fault["planned"]
        trigger = planned["trigger"]
        action = action_from_dict(planned["action"]).describe()
        where = (f"{action} → ranks {planned['target']['ranks']}, attempt {trigger.get('attempt')}, step "
                 f"{trigger.get('step')} {trigger.get('phase') or ''}")
        landed = fault.get("landed")
        landed_text = (f"ranks {landed.get('ranks')}, attempt {landed.get('attempt')}, step {landed.get('step')} "
                       f"{landed.get('phase') or ''}") if landed else f"NOT LANDED {fault.get('missed') or ''}"
        out.append(f"<tr><td>{_e(planned['id'])}</td><td>{_e(where)}</td><td>{_e(landed_text)}</td></tr>")
    out.append("</table>")
    out.append("<h2>Attempts</h2><table><tr><th>attempt</th><th>resumed from</th><th>first step</th>"
               "<th>last step</th><th>exit</th></tr>")
    for attempt in report.get("attempts", []):
        out.append("<tr>" + "".join(f"<td>{_e(attempt.get(k))}</td>" for k in
                                    ("index", "resumed_from", "first_step", "last_step", "exit")) + "</tr>")
    out.append("</table>")
    if history is not None:
        out.append("<h2>Timeline per attempt</h2><div class=\"legend\">" + "".join(
            f'<span><i class="swatch" style="background:{c}"></i>{s}</span>' for s, c in STATE_COLORS.items())
            + "</div>")
        for attempt in views.attempt_indices(history):
            svg = timeline_svg(history, attempt)
            if svg:
                out.append(f"<h3>attempt {attempt}</h3>{svg}")
    timings = report.get("timings") or {}
    out.append(restart_table(timings.get("restart_to_first_resumed_step_s") or []))
    out.append(recovery_table(timings.get("recovery_s") or []))
    out.append(f"<h2>Timings</h2><pre>{_e(json.dumps(timings, indent=1, default=str))}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def write_html(run_dir: Path, golden_metrics: dict | None = None, report: dict[str, Any] | None = None,
               history: RunHistory | None = None) -> Path:
    """Renders report.html. What is not given is read from the run dir: report.json, the histories and
    (when readable) the golden; runner.analyze passes what it already holds, `chaos report` reads it all."""
    from chaos.report.model import read_report

    run_dir = Path(run_dir)
    if report is None:
        report = read_report(run_dir)
    if golden_metrics is None:
        golden_metrics = _golden_metrics(report)
    if history is None:
        history = load_run_history(run_dir)
    path = run_dir / HTML_FILE
    safe_files.write_file(path, render_html(report, golden_metrics, history), root=run_dir)  # never through a link
    return path


def _golden_metrics(report: dict[str, Any]) -> dict | None:
    golden_path = (report.get("golden") or {}).get("path")
    if not golden_path or not Path(golden_path).is_file():
        return None
    from chaos.golden import read_golden

    try:
        return read_golden(golden_path).metrics
    except Exception:  # noqa: BLE001 - the plot is drawn without the golden rather than not at all
        return None
