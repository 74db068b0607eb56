"""Rich rendering of a RunSummary for ``dumpcmp ls``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from comparator.inspect.inventory import RunSummary, TensorSummary, divergence_lines
from comparator.report.console import output_console
from comparator.report.text import markup_safe, printable


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def _ranges(values: list[int]) -> str:
    if not values:
        return "-"
    parts = []
    start = prev = values[0]
    for value in values[1:]:
        if value == prev + 1:
            prev = value
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = value
    parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


TENSOR_COLUMNS = ("name", "tags", "dtype", "shape", "dims", "steps", "ranks", "bytes")
# NOTE: rich lays a table out cell by cell (about 1 ms a row here): a run of thousands of
# names and tags would spend seconds printing (issue 17: ls of 100k records <= 1 s).
# Longer tables are printed as plain aligned columns, one line a row, nothing folded.
PLAIN_ROWS = 200


def _tensor_row(tensor: TensorSummary) -> tuple[str, ...]:
    tags = " ".join(f"{k}={v}" for k, v in sorted(tensor.tags.items()))
    shapes = " | ".join("[" + ", ".join(map(str, s)) + "]" for s in tensor.shapes[:3])
    if len(tensor.shapes) > 3:
        shapes += f" (+{len(tensor.shapes) - 3})"
    return tuple(printable(cell) for cell in (tensor.name, tags or "-", tensor.dtype, shapes, tensor.dims or "-",
                                              _ranges(tensor.steps), _ranges(tensor.ranks), _human_bytes(tensor.bytes)))


def _print_plain(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]], console: Console) -> None:
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    text = "\n".join([f"{title} ({len(rows)})", line(columns), line(tuple("-" * w for w in widths)), *map(line, rows)])
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def render_summary(summary: RunSummary, console: Console | None = None) -> None:
    console = console or output_console()
    # NOTE: every string from the run is user text: escaped for markup and control characters.
    console.print(f"[bold]{markup_safe(summary.path)}[/]  format={markup_safe(summary.format)} "
                  f"mode={markup_safe(summary.mode)} world_size={summary.world_size}")
    if summary.command:
        console.print(f"command: {markup_safe(' '.join(summary.command))}", highlight=False)
    ranks = Table(title="ranks", title_justify="left")
    for column in ("dir", "rank", "status", "records", "steps", "parallel"):
        ranks.add_column(column, overflow="fold")
    for rank in summary.ranks:
        parallel = " ".join(f"{axis}={info['rank']}/{info['size']}" for axis, info in sorted(rank.parallel.items()))
        ranks.add_row(*(markup_safe(cell) for cell in (rank.directory, rank.rank, rank.status, rank.records,
                                                        _ranges(rank.steps), parallel or "-")))
    console.print(ranks)
    rows = [_tensor_row(tensor) for tensor in summary.tensors]
    if len(rows) > PLAIN_ROWS:
        _print_plain("tensors", TENSOR_COLUMNS, rows, console)
    else:
        tensors = Table(title="tensors", title_justify="left")
        for column in TENSOR_COLUMNS:
            # NOTE: names are what `dumpcmp show` needs: they keep their width, other cells wrap.
            longest = max((len(row[0]) for row in rows), default=4) if column == "name" else None
            tensors.add_column(column, overflow="fold", min_width=longest)
        for row in rows:
            tensors.add_row(*(markup_safe(cell) for cell in row))
        console.print(tensors)
    for line in divergence_lines(summary):
        console.print(printable(line), style="yellow", highlight=False, markup=False)
    if summary.problems:
        console.print(f"[bold yellow]incomplete run: {len(summary.problems)} problem(s)[/]")
        for problem in summary.problems:
            console.print(f"  - {printable(problem)}", highlight=False, markup=False)
    else:
        console.print("[green]complete: every rank closed, no gaps[/]")
