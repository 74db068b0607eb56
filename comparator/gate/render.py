"""``dumpcmp gate history`` in three formats, each a pure function of a History."""

from __future__ import annotations

import json
import math
from typing import Sequence

from comparator.gate.history import History, TensorPoint
from comparator.report.svg import esc, fmt
from dumper.patterns import UserRegex


def select_tensors(history: History, *, pattern: UserRegex | None = None, top: int | None = None) -> list[str]:
    """Tensors worth showing, the worst last night first (then those that failed most often)."""
    names = [t for t in history.tensors if pattern is None or pattern.search(t)]

    def rank(name: str) -> tuple[int, float]:
        points = [p for p in history.series(name) if p is not None]
        failures = sum(p.status != "pass" for p in points)
        last = next((p.error for p in reversed(points) if p.error is not None), None)
        return (-failures, -(last if last is not None else -1.0))

    names.sort(key=rank)
    return names[:top] if top else names


def drift(points: Sequence[TensorPoint | None]) -> float | None:
    """Last night's error over the first night's that measured one: > 1 means growing."""
    errors = [p.error for p in points if p is not None and p.error is not None]
    if len(errors) < 2 or errors[0] <= 0:
        return None
    return errors[-1] / errors[0]


def _cell(point: TensorPoint | None) -> str:
    if point is None:
        return "."
    mark = "" if point.status == "pass" else f" {point.status.upper()}"
    return f"{fmt(point.error) if point.error is not None else '-'}{mark}"


def history_rows(history: History, tensors: Sequence[str]) -> list[list[str]]:
    rows = []
    for name in tensors:
        series = history.series(name)
        ratio = drift(series)
        rows.append([name, *(_cell(p) for p in series), f"x{ratio:.3g}" if ratio is not None else "-"])
    return rows


def night_labels(history: History) -> list[str]:
    return [night.time[:10] + (" " + night.time[11:16] if len({n.time[:10] for n in history.nights}) < len(history.nights)
                               else "") for night in history.nights]


def render_history_table(history: History, tensors: Sequence[str], console) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"gate history: {len(history.nights)} nights, {len(tensors)} tensors (error per night)",
                  title_justify="left")
    # NOTE: names keep their width (they are what `show` and --tensors need); the night columns wrap.
    table.add_column("tensor", no_wrap=True, min_width=max((len(t) for t in tensors), default=6))
    for label, night in zip(night_labels(history), history.nights):
        table.add_column(f"{label}\nexit {night.exit_code}", justify="right", overflow="fold")
    table.add_column("last/first", justify="right")
    for row in history_rows(history, tensors):
        table.add_row(*(Text(cell) for cell in row))  # Text: a label's "[layer=1]" is not markup
    console.print(table)
    console.print("error: rel_diff (tensor data) or |norm_ratio - 1| (stats only); '.': not measured that night")


def render_history_json(history: History, tensors: Sequence[str]) -> str:
    data = history.to_json()
    data["tensors"] = {t: data["tensors"][t] for t in tensors}
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def _sparkline(points: Sequence[TensorPoint | None], width: int = 160, height: int = 28) -> str:
    values = [p.error if p is not None and p.error is not None and p.error > 0 else None for p in points]
    logs = [math.log10(v) for v in values if v is not None]
    if not logs:
        return ""
    low, high = min(logs), max(logs)
    span = (high - low) or 1.0
    step = width / max(1, len(values) - 1)
    coords = [(i * step, height - 3 - (math.log10(v) - low) / span * (height - 6))
              for i, v in enumerate(values) if v is not None]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{"#c62828" if p is not None and p.status != "pass" else "#2e7d32"}"/>'
        for (x, y), p in zip(coords, [p for p, v in zip(points, values) if v is not None]))
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="error per night (log scale)">'
            f'<polyline points="{path}" fill="none" stroke="#555"/>{dots}</svg>')


def render_history_html(history: History, tensors: Sequence[str]) -> str:
    head = "".join(f"<th>{esc(label)}<br>exit {n.exit_code}</th>" for label, n in zip(night_labels(history), history.nights))
    body = []
    for name, row in zip(tensors, history_rows(history, tensors)):
        cells = "".join(f'<td class="{"bad" if p is not None and p.status != "pass" else ""}">{esc(c)}</td>'
                        for c, p in zip(row[1:-1], history.series(name)))
        body.append(f"<tr><td class=\"mono\">{esc(name)}</td><td>{_sparkline(history.series(name))}</td>{cells}"
                    f"<td>{esc(row[-1])}</td></tr>")
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>dumpcmp gate history</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}td.mono{font-family:monospace;text-align:left}"
        "td.bad{background:#fde0dc}</style></head><body>"
        f"<h1>dumpcmp gate history</h1><p>{len(history.nights)} nights from <code>{esc(history.path)}</code>; "
        "error: rel_diff (tensor data) or |norm_ratio - 1| (stats only), one column per night; "
        "the line is the error on a log scale (red: did not pass).</p>"
        f'<table id="history"><thead><tr><th>tensor</th><th>trend</th>{head}<th>last/first</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></body></html>\n"
    )
