"""The "runs differ in" section of every report: what differs between the two runs' fingerprints.

One source (``Report.runs``, a comparator.comparability.RunsComparison) and one wording
for every format, so a table, a JUnit file and an HTML page say the same thing.
"""

from __future__ import annotations

from typing import Any

from comparator.results import Report


def runs_lines(report: Report) -> list[str]:
    """Short lines: model differences that were allowed, expected differences, what could not be checked."""
    runs = report.runs
    if runs is None:
        return []
    lines = []
    for difference in runs.model:
        lines.append(f"model differs (allowed by {difference.allowed_by}): {difference.describe()}")
    expected = [d.describe() for d in runs.expected if d.field != "command"]
    if expected:
        lines.append("runs differ in (expected): " + "; ".join(expected))
    lines += [f"not checked: {note}" for note in runs.notes]
    return lines


def runs_json(report: Report) -> dict[str, Any] | None:
    if report.runs is None:
        return None
    return {"differences": [d.to_json() for d in report.runs.differences], "notes": list(report.runs.notes)}


def runs_html(report: Report) -> str:
    from comparator.report.svg import esc

    runs = report.runs
    if runs is None:
        return ""
    rows = "".join(
        f'<tr data-kind="{d.kind}"><td class="mono">{esc(d.field)}</td><td class="mono">{esc(_short(d.baseline))}</td>'
        f'<td class="mono">{esc(_short(d.target))}</td>'
        f'<td>{esc("expected" if d.kind == "expected" else "model, allowed by " + str(d.allowed_by))}</td></tr>'
        for d in runs.differences)
    notes = "".join(f'<p class="muted">not checked: {esc(note)}</p>' for note in runs.notes)
    table = (f'<table id="runs-differ"><thead><tr><th>field</th><th>baseline</th><th>target</th><th>kind</th></tr>'
             f"</thead><tbody>{rows}</tbody></table>" if rows else '<p class="muted">The fingerprints agree.</p>')
    return f'<h3>What differs between the runs</h3>{table}{notes}'


def _short(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "(none)" if value is None else str(value)
