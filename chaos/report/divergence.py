"""The parts of report.html that show what a loss plot cannot: how far each logged value is from the golden
(a 1e-3 relative divergence is invisible on a loss curve), against the tolerance the comparison used, with
the restarts marked; and which checkpoint entries diverged at which iteration."""

from __future__ import annotations

import html
import math
from typing import Any

from chaos.checkers import trajectory, views
from chaos.comparison import tolerance_for
from chaos.history import RunHistory

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
FLOOR = 1e-12
"""Relative differences below this (and exact equality) are drawn on the 'equal' band at the bottom."""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def relative_differences(golden: dict[int, float], values: dict[int, float]) -> dict[int, float]:
    out = {}
    for step, value in values.items():
        if step not in golden:
            continue
        expected = golden[step]
        if value == expected:
            out[step] = 0.0
        elif expected == 0 or not (math.isfinite(value) and math.isfinite(expected)):
            out[step] = math.inf
        else:
            out[step] = abs(value - expected) / abs(expected)
    return out


def difference_svg(report: dict[str, Any], golden_metrics: dict | None, history: RunHistory | None,
                   metric: str = "lm loss", field: str = "lm_loss", width: int = 860, height: int = 300) -> str:
    """|actual - golden| / |golden| per step and attempt on a log scale, the tolerance as a dashed line, each
    attempt's first step as a restart marker. A loss printed as a mean over two iterations (Megatron-LM's
    second logged iteration) is measured against the golden's mean over the same iterations, as the
    trajectory check does."""
    golden = {int(s): float(v) for s, v in ((golden_metrics or {}).get(metric) or {}).items()}
    if not golden or history is None:
        return ""
    info = report.get("golden") or {}
    mode = info.get("mode") or "exact"
    rtol = tolerance_for(metric, info.get("tolerance"), mode)
    windows = {int(s): tuple(w) for s, w in (info.get("loss_windows") or {}).items()}
    series = []
    for attempt in history.attempts:
        values, expected = {}, {}
        for step, record in views.attempt_metrics(attempt).items():
            if record.get(field) is None or step not in golden:
                continue
            window = tuple(record.get("loss_window") or ()) or None
            mean = golden[step] if window == windows.get(step) or metric != "lm loss" else \
                trajectory.expected_mean(golden, windows, window or (step,))
            if mean is not None:  # a printed mean over steps the golden cannot average: the check says why
                values[step], expected[step] = float(record[field]), mean
        differences = relative_differences(expected, values)
        if differences:
            series.append((attempt.index, differences))
    if not series:
        return ""
    finite = [d for _, ds in series for d in ds.values() if FLOOR <= d < math.inf] + ([rtol] if rtol > 0 else [])
    top_exp = math.ceil(math.log10(max(finite))) if finite else -6
    bottom_exp = math.floor(math.log10(min(finite))) if finite else -12
    top_exp, bottom_exp = max(top_exp, bottom_exp + 2), min(bottom_exp, top_exp - 2)
    left, right, top, bottom, band = 70, 20, 18, 40, 18
    x_max = max([int(report.get("train_iters") or 1)] + [s for _, ds in series for s in ds])

    def x(step: float) -> float:
        return left + (step - 1) / max(x_max - 1, 1) * (width - left - right)

    plot_bottom = height - bottom - band

    def y(value: float) -> float:
        if value == math.inf:
            return top
        if value < FLOOR or value <= 0:
            return plot_bottom + band / 2
        exponent = min(max(math.log10(value), bottom_exp), top_exp)
        return top + (top_exp - exponent) / (top_exp - bottom_exp) * (plot_bottom - top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="relative difference from the golden per step">']
    for exponent in range(bottom_exp, top_exp + 1):
        parts.append(f'<line x1="{left}" y1="{y(10.0 ** exponent):.1f}" x2="{width - right}" '
                     f'y2="{y(10.0 ** exponent):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 5}" y="{y(10.0 ** exponent) + 3:.1f}" font-size="10" text-anchor="end">'
                     f'1e{exponent}</text>')
    parts.append(f'<rect x="{left}" y="{plot_bottom}" width="{width - left - right}" height="{band}" fill="#eef7ee"/>'
                 f'<text x="{left - 5}" y="{plot_bottom + band / 2 + 3:.1f}" font-size="10" text-anchor="end">'
                 f'equal</text>')
    tick_every = max(1, x_max // 12)
    for step in range(1, x_max + 1, tick_every):
        parts.append(f'<text x="{x(step):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">'
                     f'{step}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" font-size="11" text-anchor="middle">step'
                 f'</text>')
    if rtol > 0:
        parts.append(f'<line x1="{left}" y1="{y(rtol):.1f}" x2="{width - right}" y2="{y(rtol):.1f}" stroke="#c62828" '
                     f'stroke-dasharray="6,4"><title>tolerance {rtol:.3g} ({_e(mode)})</title></line>'
                     f'<text x="{width - right - 4}" y="{y(rtol) - 4:.1f}" font-size="10" fill="#c62828" '
                     f'text-anchor="end">tolerance {rtol:.3g} ({_e(mode)})</text>')
    else:
        parts.append(f'<text x="{width - right - 4}" y="{top + 10}" font-size="10" fill="#c62828" text-anchor="end">'
                     f'rule: exact (any point above the band fails)</text>')
    for attempt in report.get("attempts", [])[1:]:
        first = attempt.get("first_step")
        if first is None:
            continue
        parts.append(f'<line x1="{x(first):.1f}" y1="{top}" x2="{x(first):.1f}" y2="{plot_bottom + band}" '
                     f'stroke="#6f42c1" stroke-dasharray="2,3"><title>attempt {attempt.get("index")} resumed from '
                     f'{attempt.get("resumed_from")}</title></line>'
                     f'<text x="{x(first) + 2:.1f}" y="{top + 22}" font-size="10" fill="#6f42c1">'
                     f'restart {attempt.get("index")}</text>')
    for n, (index, differences) in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        for step, difference in sorted(differences.items()):
            off = difference > rtol if rtol > 0 else difference > 0
            shown = "inf" if difference == math.inf else f"{difference:.3g}"
            parts.append(f'<circle cx="{x(step):.1f}" cy="{y(difference):.1f}" r="{4 if off else 2.5}" '
                         f'fill="{"#d62728" if off else color}"><title>attempt {index} step {step}: relative '
                         f'difference {shown}</title></circle>')
    parts.append("</svg>")
    legend = "".join(f'<span><i class="swatch" style="background:{PALETTE[n % len(PALETTE)]}"></i>attempt {index}'
                     f'</span>' for n, (index, _) in enumerate(series))
    return "".join(parts) + f'<div class="legend">{legend}<span><i class="swatch" style="background:#d62728"></i>' \
                            f'outside the rule</span></div>'


def state_table(report: dict[str, Any], limit: int = 30) -> str:
    """Which checkpoint entries differed from the golden at which iteration (checkpoint_state's evidence)."""
    check = next((c for c in report.get("checks", []) if c.get("name") == "checkpoint_state"), None)
    if not check:
        return ""
    iterations = [i for i in (check.get("evidence") or {}).get("iterations", []) if "compared" in i]
    if not iterations:
        return f"<p>checkpoint state: {_e(check.get('status'))}: {_e(check.get('detail'))}</p>"
    keys: list[str] = []
    for item in iterations:
        for key in item.get("differing_keys", []):
            if key not in keys:
                keys.append(key)
    head = "".join(f"<th>{_e(i['iteration'])}<br><small>attempt {_e(i.get('attempt'))}</small></th>"
                   for i in iterations)
    summary = "".join(f"<td>{_e(i.get('identical'))} equal, {_e(i.get('within_spread'))} within spread, "
                      f"<b>{_e(i.get('differing'))}</b> differ</td>" for i in iterations)
    rows = [f"<tr><th>entries</th>{summary}</tr>"]
    for key in keys[:limit]:
        cells = "".join('<td style="background:#fdd">differs</td>' if key in i.get("differing_keys", [])
                        else "<td>=</td>" for i in iterations)
        rows.append(f"<tr><td><code>{_e(key)}</code></td>{cells}</tr>")
    more = f"<p>and {len(keys) - limit} more differing entries (report.json has them)</p>" if len(keys) > limit else ""
    return (f"<h2>Checkpoint state against the golden</h2><p>{_e(check.get('status'))}: {_e(check.get('detail'))}"
            f"</p><table><tr><th>iteration</th>{head}</tr>{''.join(rows)}</table>{more}")
