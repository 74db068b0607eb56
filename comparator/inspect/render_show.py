"""Render a :class:`comparator.inspect.show.TensorView` for the terminal (``dumpcmp show``)."""

from __future__ import annotations

from rich import box
from rich.console import Console
from comparator.report.text import markup_safe as escape
from rich.table import Table

from comparator.report.table import STATUS_STYLE
from comparator.inspect.show import TensorView
from comparator.report.console import output_console
from comparator.report.svg import fmt

STAT_FIELDS = ("numel", "min", "max", "mean", "abs_mean", "std", "l2", "nan", "inf")


def _stat(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return fmt(float(value))  # type: ignore[arg-type]


def render_view(view: TensorView, console: Console | None = None) -> None:
    console = console or output_console()
    if view.tensor is None:
        console.print(f"{len(view.matches)} tensors named {view.name} in {view.run}", markup=False, highlight=False)
        console.print("pick one with --step/--tags to see its shards (and a diff with --baseline)", markup=False)
        table = Table(box=box.SIMPLE_HEAD)
        for column in ("step", "tags", "ranks", "shape", "dtype", "l2 (rank 0)", "mean (rank 0)"):
            table.add_column(column, overflow="fold")
        for tensor in view.matches:
            first = tensor.records[0]
            table.add_row(str(tensor.step), " ".join(f"{k}={v}" for k, v in sorted(tensor.tags.items())) or "-",
                          str(len(tensor.records)), str(list(first.shape)), first.dtype, _stat(first.stats.l2),
                          _stat(first.stats.mean))
        console.print(table)
        return
    tensor = view.tensor
    first = tensor.records[0]
    console.print(f"[bold]{escape(tensor.label)}[/] in {escape(view.run)}", highlight=False)
    shape = list(view.plan.shape) if view.plan is not None else "?"
    console.print(f"dtype {first.dtype}  shape {shape}  dims {first.dims!r}  "
                  f"{'tensor data' if view.has_data else 'stats only (no data)'}", highlight=False, markup=False)
    if view.plan is not None:
        console.print(f"unshard: {view.plan.describe()}", highlight=False, markup=False)
    if view.plan_error:
        console.print(f"[yellow]cannot put the shards together: {escape(view.plan_error)}[/]", highlight=False)
    if view.stats is not None:
        stats = view.stats
        console.print("whole tensor (pooled from the shards' stats): " + "  ".join(
            f"{k} {_stat(getattr(stats, k))}" for k in STAT_FIELDS if k != "numel") + f"  numel {stats.numel}",
            highlight=False)
    elif view.stats_error:
        console.print(f"[dim]whole-tensor stats: {escape(view.stats_error)}[/]", highlight=False)
    console.print(f"[bold]{len(view.shards)} shard(s)[/]", highlight=False)
    for shard in view.shards:
        record = shard.record
        where = f"{record.source}/{record.file} key {record.key}" if record.file else "no data"
        console.print(f"  rank {record.rank} ({shard.place}) {list(record.shape)}: "
                      + "  ".join(f"{k} {_stat(getattr(record.stats, k))}" for k in STAT_FIELDS[1:])
                      + f"  {record.checksum}  [dim]{escape(where)}[/]", highlight=False)
    result = view.comparison
    if result is None:
        return
    console.print(f"[bold]against the baseline:[/] [{STATUS_STYLE[result.status]}]{result.status}[/]"
                  + (" (stats only)" if result.stats_only else ""), highlight=False)
    if result.metrics is not None:
        metrics = result.metrics
        console.print("  " + "  ".join(f"{k} {fmt(v)}" for k, v in metrics.as_dict().items()), highlight=False)
        if metrics.max_abs_index:
            console.print(f"  max |t-b| at {list(metrics.max_abs_index)}: baseline {metrics.max_abs_baseline:.6g}, "
                          f"target {metrics.max_abs_target:.6g}", highlight=False)
        if metrics.worst_token is not None:
            console.print(f"  worst token {metrics.worst_token[0]} (rel_l2 {fmt(metrics.worst_token[1])})", highlight=False)
    if result.stats is not None:
        console.print("  " + "  ".join(f"{k} {fmt(v)}" for k, v in result.stats.values().items())
                      + f"  checksum_match {result.stats.checksum_match}", highlight=False)
    for label, text in (("why", result.reason), ("hint", result.hint)):
        if text:
            console.print(f"  {label}: {text}", highlight=False, markup=False)
    if result.judgement is not None:
        console.print(f"  judged by {result.judgement.rule}", highlight=False, markup=False)
    for note in result.notes:
        console.print(f"  [dim]note: {escape(note)}[/]", highlight=False)


def render_per_token(view: TensorView, console: Console | None = None) -> None:
    """Every token's rel_l2 against the baseline (``dumpcmp show --tokens``), worst marked."""
    from comparator.inspect.show_json import per_token_rows

    console = console or output_console()
    rows = per_token_rows(view)
    if not rows:
        console.print("no per-token errors: give --baseline, and a tensor whose dims name its token dim 't'",
                      markup=False, highlight=False)
        return
    worst = max(range(len(rows)), key=lambda i: rows[i][1])
    table = Table(box=box.SIMPLE_HEAD, title="per-token rel_l2 (|t-b| / |b| of each token's row)", title_justify="left")
    table.add_column("token", justify="right")
    table.add_column("rel_l2", justify="right")
    table.add_column("")
    for index, (token, value) in enumerate(rows):
        table.add_row(str(token), fmt(value), "worst" if index == worst else "")
    console.print(table)
