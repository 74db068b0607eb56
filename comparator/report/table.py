"""The terminal report: first divergence on top, then a compact per-tensor table."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from comparator.report.console import output_console
from comparator.report.text import markup_safe, printable

from comparator.report.runs import runs_lines
from comparator.results import Report, TensorResult

STATUS_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow", "error": "magenta"}
# Beyond this many rows, passing tensors are folded into one line per run of passes.
MAX_ROWS = 200


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.3g}" if abs(value) >= 1e-3 and abs(value) < 1e4 else f"{value:.2e}"


def _tags(result: TensorResult) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(result.tags.items())) or "-"


def _short_reason(result: TensorResult) -> str | None:
    """One line: the first failed limit, or the reason for a skip or error."""
    judgement, metrics = result.judgement, result.metrics
    if judgement is not None and metrics is not None and judgement.failed:
        from comparator.judge.verdicts import metric_values

        metric = judgement.failed[0]
        if metric in judgement.limits:
            value = metric_values(metrics, result.replica_disagreement)[metric]
            return f"{metric} {_fmt(value)} outside {judgement.limits[metric].describe().split(' ', 1)[1]}"
    return result.reason


def _first_divergence_panel(report: Report) -> Panel | None:
    first = report.first_divergence
    if first is None:
        return None
    result = report.results[first.index]
    lines = Text()
    lines.append(printable(result.label), style="bold")
    lines.append(printable(f"  ({first.origin}: {first.origin_detail})\n" if first.origin_detail else f"  ({first.origin})\n"))
    if first.reason:
        lines.append(printable(f"why:  {first.reason}\n"))
    if first.hint:
        lines.append("hint: ", style="bold")
        lines.append(printable(f"{first.hint}\n"), style="cyan")
    metrics = result.metrics
    if metrics is not None and metrics.max_abs_index:
        lines.append(
            f"max |t-b| = {_fmt(metrics.max_abs)} at {list(metrics.max_abs_index)} "
            f"(baseline {metrics.max_abs_baseline:.6g}, target {metrics.max_abs_target:.6g})\n"
        )
        worst = metrics.worst_token
        if worst is not None:
            lines.append(f"worst token: {worst[0]} (rel_l2 {_fmt(worst[1])})\n")
    if result.judgement is not None:
        required = ", ".join(limit.describe() for m, limit in result.judgement.required.items() if m in result.judgement.failed)
        lines.append(printable(f"judged by {result.judgement.rule}"))
        if required:
            lines.append(f"; would pass with {required}")
        if result.floor_ratio is not None:
            lines.append(f"; {_fmt(result.floor_ratio)} x its calibrated noise")
        lines.append("\n")
    for side in (result.baseline, result.target):
        if side is not None:
            label = "baseline" if side is result.baseline else "target"
            lines.append(f"{label}: {side.shape and list(side.shape)} {side.dtype} ranks {list(side.ranks)} "
                         f"dims {side.dims!r} ({side.plan})\n", style="dim")
    for note in result.notes:
        lines.append(printable(f"note: {note}\n"), style="dim")
    _collective_lines(report, lines)
    lines.rstrip()
    return Panel(lines, title="first divergence", title_align="left", border_style="red")


def _collective_lines(report: Report, lines: Text) -> None:
    trace = report.collectives
    if trace is None:
        return
    lines.append("collectives since the last passing tensor:\n", style="bold")
    for line in trace.lines():
        lines.append(printable(f"  {line}\n"))
    for line in trace.differences:
        lines.append(printable(f"  {line}\n"), style="yellow")


def render_table(report: Report, console: Console | None = None) -> None:
    console = console or output_console()
    console.print(f"[bold]baseline[/] {markup_safe(report.baseline)}   [bold]target[/] {markup_safe(report.target)}   "
                  f"aligner={markup_safe(report.aligner)}", highlight=False)
    if report.aligner_reason:
        console.print(f"[dim]{markup_safe(report.aligner_reason)}[/]", highlight=False)
    for line in runs_lines(report):  # what differs between the runs' fingerprints
        console.print(Text(printable(line), style="dim"))
    panel = _first_divergence_panel(report)
    if panel is not None:
        console.print(panel)
    table = Table(title_justify="left", show_lines=False, pad_edge=False, box=box.SIMPLE_HEAD)
    show_tags = any(r.tags for r in report.results)
    fold = len(report.results) > MAX_ROWS
    rows: list[tuple[dict[str, str], str, str, str] | None] = []  # None: a fold of passing tensors
    folded: list[int] = []
    for index, result in enumerate(report.results):
        if fold and result.status == "pass" and not result.grafted and not result.notes:  # rows left out stay shown
            if not rows or rows[-1] is not None:
                rows.append(None)
                folded.append(0)
            folded[-1] += 1
            continue
        metrics = result.metrics
        cells = {
            "#": str(index), "step": str(result.step), "name": printable(result.name), "tags": printable(_tags(result)),
            "status": ("grafted" if result.grafted and result.status == "pass" else result.status)
            + (" (grafted)" if result.grafted and result.status != "pass" else "")
            + (" (allowed)" if result.allowed else "") + (" ^" if result.origin == "propagated" else "")
            + (" (stats)" if result.stats_only else ""),
        }
        for column in ("rel_diff", "rel_l2", "cosine", "norm_ratio", "max_abs"):
            cells[column] = _fmt(getattr(metrics, column)) if metrics is not None else "-"
        if result.stats is not None:
            cells["norm_ratio"] = _fmt(result.stats.norm_ratio)
        cells["floor"] = _fmt(result.floor_ratio)  # metric / calibrated noise (dumpcmp calibrate)
        alignment = result.alignment.describe() if result.alignment is not None and result.alignment.changed_anything else ""
        rows.append((cells, "cyan" if result.grafted else STATUS_STYLE[result.status],
                     # NOTE: a pass judged on part of its rows (benign routing flips, tokens they
                     # reach) says so here: what was left out is part of the verdict.
                     printable(result.hint or _short_reason(result) or alignment or (result.notes[0] if result.notes else "")),
                     "dim" if result.origin == "propagated" else ""))
    order = ["#", "step", "name", "tags", "status", "rel_diff", "rel_l2", "cosine", "norm_ratio", "floor", "max_abs"]
    widths = {c: max([len(c)] + [len(r[0][c]) for r in rows if r is not None]) for c in order}
    # Essential columns first; the others only while the hint keeps some room.
    chosen = ["step", "name", "status", "rel_diff", "norm_ratio"] + (["tags"] if show_tags else [])
    if any(r.floor_ratio is not None for r in report.results):
        chosen.append("floor")  # thresholds from dumpcmp calibrate: x times the measured noise
    for optional in ("rel_l2", "cosine", "max_abs", "#"):
        if sum(widths[c] + 2 for c in chosen + [optional]) + 32 <= console.width:
            chosen.append(optional)
    columns = [c for c in order if c in chosen]
    used = sum(widths[c] + 2 for c in columns)
    for column in columns:
        justify = "left" if column in ("name", "tags", "status") else "right"
        # NOTE: names and tags wrap (fold) when they must: a cut name is useless to `dumpcmp show`.
        table.add_column(column, justify=justify, no_wrap=column not in ("name", "tags"), overflow="fold", min_width=widths[column])  # type: ignore[arg-type]
    room = max(16, console.width - used - 4)
    table.add_column("hint / reason", overflow="fold", min_width=min(room, 16))
    fold_counts = iter(folded)
    for row in rows:
        if row is None:
            cells = {c: "" for c in columns}
            cells["name"] = f"... {next(fold_counts)} passing"
            table.add_row(*(Text(cells[c], style="dim") for c in columns), "")
            continue
        cells, style, hint, hint_style = row
        # Text cells: rich does not parse markup in them (names may hold "[/]").
        table.add_row(*(Text(cells[c], style=style if c == "status" else "") for c in columns), Text(hint, style=hint_style))
    console.print(table)
    summary = report.summary
    style = "green" if report.exit_code == 0 else "red" if report.exit_code == 1 else "yellow"
    console.print(
        f"[bold]{summary.total}[/] tensors: [green]{summary.passed} passed[/], [red]{summary.failed} failed[/], "
        f"[yellow]{summary.skipped} skipped[/], [magenta]{summary.errored} errors[/]"
        + (f", [cyan]{summary.grafted} grafted[/]" if summary.grafted else "")
        + (f"; {summary.compared_fraction:.1%} of rows compared ({summary.partially_compared} tensor(s) on part of "
           f"their rows, {summary.nothing_compared} on none; --min-compared {summary.min_compared:g})"
           if summary.partially_compared or summary.nothing_compared else "")
        + (f" ({summary.allowed_failures} failures and {summary.allowed_skips} skips allowed)"
           if summary.allowed_failures or summary.allowed_skips else ""),
        highlight=False,
    )
    stats_only = sum(r.stats_only for r in report.results)
    if stats_only:
        console.print(f"[dim](stats): {stats_only} tensor(s) compared from index stats and checksums only "
                      "(a side was dumped in stats mode)[/]", highlight=False)
    if any(report.problems.values()):
        for side, problems in report.problems.items():
            for problem in problems:
                console.print(f"[yellow]{side} run: {markup_safe(problem)}[/]", highlight=False)
    if report.graft is not None:
        console.print(f"[bold cyan]graft: {report.graft.outcome}[/]: {markup_safe(report.graft.detail)}", highlight=False)
    console.print(f"[{style}]exit {report.exit_code}: {markup_safe(report.exit_reason)}[/]", highlight=False)
    if any(r.origin == "propagated" for r in report.results):
        console.print("[dim]^ propagated: a tensor it consumes did not pass[/]")
