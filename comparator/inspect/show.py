"""``dumpcmp show``: one tensor of a run up close: stats, shards, diff against a baseline, a picture.

    view = show_tensor("runs/tp2", "moe_output", step=0, tags={"layer": "1"}, baseline="runs/tp1")
    view.shards, view.stats, view.comparison, view.matches

Several logical tensors can match a name (one per step and tag set): then ``view``
lists them (``matches``) and the rest stays empty until ``step``/``tags`` narrow it
down to one. Pictures (``write_plot``): a heatmap of |t - b| (with a baseline) or of
|values|, rows = tokens (or the first dim), plus a histogram; PNG written by
comparator/report/png.py, or SVG with labelled axes when the file name ends in ``.svg``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from comparator.errors import ComparatorError, OptionError, UnshardError
from comparator.matching import LogicalTensor, group_records
from comparator.results import TensorResult
from comparator.judge.stats_only import PooledStats, pool_stats
from comparator.unshard import UnshardPlan, coords_text, execute_unshard, plan_unshard
from dumper.format import IndexRecord
from dumper.reader import open_run

if TYPE_CHECKING:
    import torch

# A picture holds at most this many cells per side; bigger tensors are shown by the
# largest |value| of each block.
MAX_PLOT_ROWS = 256
MAX_PLOT_COLUMNS = 512


class ShowError(ComparatorError):
    """The tensor asked for is not in the run, or cannot be shown as asked."""


@dataclass(frozen=True, kw_only=True)
class Shard:
    record: IndexRecord
    place: str  # coordinates along the unshard plan, e.g. "ep=1, attn_tp=0"


@dataclass(frozen=True, kw_only=True)
class TensorView:
    run: str
    name: str
    matches: tuple[LogicalTensor, ...]  # every logical tensor the name, step and tags select
    tensor: LogicalTensor | None = None  # the one shown in full, when exactly one matches
    plan: UnshardPlan | None = None
    plan_error: str | None = None
    shards: tuple[Shard, ...] = ()
    stats: PooledStats | None = None  # whole-tensor stats pooled from the shards' index stats
    stats_error: str | None = None
    comparison: TensorResult | None = None  # against the baseline, if one was given
    has_data: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def parse_tags(values: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["layer=1", "expert=2,rank=0"]`` -> {"layer": "1", ...}; values compare as text."""
    tags: dict[str, str] = {}
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, text = part.partition("=")
            if not sep or not key.strip():
                raise OptionError(f"--tags {part!r}: expected KEY=VALUE, e.g. --tags layer=1")
            tags[key.strip()] = text.strip()
    return tags


def _tags_match(tags: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    return all(key in tags and str(tags[key]) == value for key, value in wanted.items())


def show_tensor(run_path: str | os.PathLike[str], name: str, *, step: int | None = None,
                tags: Mapping[str, str] | None = None, baseline: str | os.PathLike[str] | None = None,
                aligner: str = "none", dims: str | None = None) -> TensorView:
    """Find ``name`` in the run; describe it fully when exactly one logical tensor matches."""
    wanted = dict(tags or {})
    with open_run(run_path) as run:
        tensors = group_records(run.records)
        named = [t for t in tensors if t.name == name]
        if not named:
            names = sorted({t.name for t in tensors})
            close = difflib.get_close_matches(name, names, n=3)
            suggestion = f"; did you mean {', '.join(close)}?" if close else ""
            listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ShowError(f"{run.path}: no tensor named {name!r}{suggestion} (names: {listed}; see dumpcmp ls)")
        matches = [t for t in named if (step is None or t.step == step) and _tags_match(t.tags, wanted)]
        if not matches:
            steps = sorted({t.step for t in named})
            tag_sets = sorted({", ".join(f"{k}={v}" for k, v in sorted(t.tags.items())) or "(none)" for t in named})
            raise ShowError(f"{run.path}: {name!r} has no record at step {step if step is not None else 'any'} with "
                            f"tags {wanted or '{}'}; its steps: {_ranges(steps)}; its tags: {'; '.join(tag_sets[:8])}")
        if len(matches) > 1:
            return TensorView(run=run.path, name=name, matches=tuple(matches))
        tensor = matches[0]
        view: dict[str, Any] = dict(run=run.path, name=name, matches=(tensor,), tensor=tensor,
                                    has_data=all(r.file is not None for r in tensor.records))
        try:
            plan = plan_unshard(tensor.label, tensor.records, dims=dims)
        except UnshardError as exc:
            view["plan_error"] = str(exc)
            view["shards"] = tuple(Shard(record=r, place=f"rank {r.rank}") for r in tensor.records)
            return TensorView(**view)
        view["plan"] = plan
        view["shards"] = tuple(Shard(record=r, place=coords_text(plan, c) or "whole tensor") for c, r in plan.shards)
        try:
            view["stats"] = pool_stats(plan)
        except UnshardError as exc:
            view["stats_error"] = str(exc)
    if baseline is not None:
        view["comparison"] = _compare_one(baseline, run_path, tensor, aligner)
    return TensorView(**view)


def _compare_one(baseline: str | os.PathLike[str], target: str | os.PathLike[str], tensor: LogicalTensor,
                 aligner: str) -> TensorResult | None:
    from comparator.pipeline import compare

    report = compare(baseline, target, names=f"^{re.escape(tensor.name)}$", steps=str(tensor.step), aligner=aligner)
    for result in report.results:
        if result.step == tensor.step and result.tags == tensor.tags:
            return result
    return None


def _ranges(steps: list[int]) -> str:
    if not steps:
        return "none"
    if steps == list(range(steps[0], steps[-1] + 1)) and len(steps) > 2:
        return f"{steps[0]}..{steps[-1]}"
    return ", ".join(map(str, steps))


# ----------------------------------------------------------------------- pictures
@dataclass(frozen=True, kw_only=True)
class Picture:
    matrix: list[list[float]]  # |values| or |t - b|, block-reduced to the plot size
    values: list[float]  # what the histogram counts (a sample for big tensors)
    what: str  # "|t - b|" or "|value|"
    row_name: str  # "token" or "dim 0"
    rows: int  # of the full tensor
    columns: int
    block: tuple[int, int]  # rows and columns per cell
    histogram_of: str


def load_tensor(run_path: str | os.PathLike[str], plan: UnshardPlan) -> "torch.Tensor":
    from dumper.loader import TensorLoader

    with open_run(run_path) as run:
        loader = TensorLoader(run)
        return execute_unshard(plan, loader.load, verify_replicas=False).tensor


def picture(view: TensorView, *, baseline: str | os.PathLike[str] | None = None) -> Picture:
    """The heatmap and histogram data of a view's tensor (or of its diff against ``baseline``)."""
    import torch

    if view.tensor is None or view.plan is None:
        raise ShowError("--plot needs exactly one tensor whose shards can be put together; narrow with --step/--tags")
    if not view.has_data:
        raise ShowError(f"{view.run}: {view.tensor.label} has no data (the run was dumped in stats mode): nothing to plot")
    target = load_tensor(view.run, view.plan).to(torch.float64)
    what, values_of = "|value|", "value"
    if baseline is not None:
        base_view = show_tensor(baseline, view.name, step=view.tensor.step, tags={k: str(v) for k, v in view.tensor.tags.items()})
        if base_view.plan is None or not base_view.has_data:
            raise ShowError(f"{baseline}: {view.tensor.label} cannot be loaded there (stats mode, or shards that do "
                            "not fit together): plot without --baseline")
        base = load_tensor(baseline, base_view.plan).to(torch.float64)
        if tuple(base.shape) != tuple(target.shape):
            raise ShowError(f"shapes differ (baseline {list(base.shape)} vs target {list(target.shape)}): cannot plot "
                            "a difference; plot each run on its own")
        target = target - base
        what, values_of = "|t - b|", "t - b"
    token_dim = view.plan.token_dim
    if target.dim() == 0:
        target = target.reshape(1, 1)
    if token_dim is not None and token_dim < target.dim():
        target = target.movedim(token_dim, 0)
    rows = target.shape[0] if target.dim() else 1
    matrix = target.reshape(rows, -1).abs()
    columns = matrix.shape[1]
    block_rows = max(1, math.ceil(rows / MAX_PLOT_ROWS))
    block_columns = max(1, math.ceil(columns / MAX_PLOT_COLUMNS))
    if block_rows > 1 or block_columns > 1:
        padded = torch.nn.functional.pad(matrix, (0, (-columns) % block_columns, 0, (-rows) % block_rows))
        matrix = torch.nn.functional.max_pool2d(padded[None, None], (block_rows, block_columns))[0, 0]
    flat = target.reshape(-1)
    if flat.numel() > 200_000:
        flat = flat[torch.linspace(0, flat.numel() - 1, 200_000).long()]
    return Picture(
        matrix=matrix.tolist(), values=flat.tolist(), what=what,
        row_name="token" if token_dim is not None else "dim 0", rows=rows, columns=columns,
        block=(block_rows, block_columns), histogram_of=values_of,
    )


def plot_format(path: str | os.PathLike[str]) -> str:
    """"png" or "svg" from the file name; anything else is refused (the bytes would not match the name)."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in (".png", ".svg"):
        raise OptionError(f"--plot {os.fspath(path)}: pictures are written as PNG or SVG; name the file .png or .svg")
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise OptionError(f"--plot {os.fspath(path)}: the folder {folder} does not exist; create it or write elsewhere")
    if os.path.isdir(os.fspath(path)):
        raise OptionError(f"--plot {os.fspath(path)} is a directory; give a file name ending in .png or .svg")
    return suffix[1:]


def write_plot(path: str | os.PathLike[str], pic: Picture, *, title: str) -> str:
    """Write the picture (PNG, or SVG for a .svg path); returns a legend to print."""
    from comparator.report.svg import LogScale, fmt

    plot_format(path)

    cells = [v for row in pic.matrix for v in row]
    scale = LogScale.fit(cells, 0.0, 1.0, floor_exp=-12)
    legend = (f"heatmap: {pic.what}, rows = {pic.row_name} 0..{pic.rows - 1}, columns = the other "
              f"{pic.columns} values per row"
              + (f" (each cell: max of {pic.block[0]}x{pic.block[1]})" if pic.block != (1, 1) else "")
              + f"; log colour from 1e{scale.low_exp} (dark blue) to 1e{scale.high_exp} (yellow). "
              f"Below: histogram of {pic.histogram_of}, {len(pic.values)} values, from {fmt(min(pic.values, default=0))} "
              f"to {fmt(max(pic.values, default=0))}.")
    try:
        if os.fspath(path).endswith(".svg"):
            _write_svg(path, pic, title=title)
        else:
            _write_png(path, pic, scale=scale, title=title, legend=legend)
    except OSError as exc:
        raise OptionError(f"--plot {os.fspath(path)}: cannot write the picture ({exc.strerror})") from None
    return legend


def _write_png(path: str | os.PathLike[str], pic: Picture, *, scale: Any, title: str, legend: str) -> None:
    from comparator.report.png import write_png
    from comparator.report.svg import colormap

    rows, columns = len(pic.matrix), len(pic.matrix[0]) if pic.matrix else 1
    cell = max(1, min(12, 1024 // max(columns, 1), 768 // max(rows, 1)))
    margin, bar_w, hist_h, gap = 8, 16, 120, 12
    heat_w, heat_h = columns * cell, rows * cell
    width = max(margin * 2 + heat_w + gap + bar_w, 256)
    height = margin * 2 + heat_h + gap + hist_h
    white = (255, 255, 255)
    image = [[white] * width for _ in range(height)]
    for r, row in enumerate(pic.matrix):
        for c, value in enumerate(row):
            colour = colormap(scale.fraction(value))
            for y in range(margin + r * cell, margin + (r + 1) * cell):
                line = image[y]
                for x in range(margin + c * cell, margin + (c + 1) * cell):
                    line[x] = colour
    bar_x = margin + heat_w + gap
    for y in range(heat_h):
        colour = colormap(1 - y / max(1, heat_h - 1))
        for x in range(bar_x, bar_x + bar_w):
            image[margin + y][x] = colour
    # Histogram of the values, bars in dark blue on a light frame.
    finite = [v for v in pic.values if math.isfinite(v)]
    bins = max(8, min(128, (width - 2 * margin) // 4))
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    high = high if high > low else low + 1.0
    counts = [0] * bins
    for value in finite:
        counts[min(bins - 1, int((value - low) / (high - low) * bins))] += 1
    peak = max(counts) or 1
    top = margin + heat_h + gap
    bin_w = (width - 2 * margin) / bins
    for y in range(top, top + hist_h):
        image[y][margin] = (180, 180, 180)
    for x in range(margin, width - margin):
        image[top + hist_h - 1][x] = (180, 180, 180)
    for i, count in enumerate(counts):
        bar = round((hist_h - 2) * count / peak)
        for x in range(margin + round(i * bin_w) + 1, margin + round((i + 1) * bin_w)):
            for y in range(top + hist_h - 1 - bar, top + hist_h - 1):
                image[y][x] = (59, 82, 139)
    write_png(path, image, text={"Title": title, "Description": legend, "Software": "dumpcmp"})


def _write_svg(path: str | os.PathLike[str], pic: Picture, *, title: str) -> None:
    from comparator.report.svg import esc, heatmap, histogram

    step = max(1, math.ceil(len(pic.matrix) / 64))  # one element per cell: keep the file light
    rows = [(f"{pic.row_name} {r * pic.block[0]}", pic.matrix[r]) for r in range(0, len(pic.matrix), step)]
    pictures = [
        heatmap(rows, value_name=pic.what, column_name="value" if pic.block[1] == 1 else f"block of {pic.block[1]}"),
        histogram(pic.values, title=f"histogram of {pic.histogram_of}"),
    ]
    # NOTE: one SVG document holding both pictures, stacked (nested <svg> elements).
    sizes = [tuple(int(v) for v in re.match(r'<svg [^>]*?width="(\d+)" height="(\d+)"', p).groups())  # type: ignore[union-attr]
             for p in pictures]
    width, height = max(w for w, _ in sizes), 24 + sum(h for _, h in sizes)
    pieces = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
              f'<style>text{{font:11px sans-serif;fill:#444}}</style><text x="4" y="16">{esc(title)}</text>']
    y = 24
    for svg, (_, h) in zip(pictures, sizes):
        pieces.append(svg.replace("<svg ", f'<svg y="{y}" ', 1))
        y += h
    pieces.append("</svg>")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(pieces))
