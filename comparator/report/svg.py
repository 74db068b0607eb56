"""Plots as inline SVG text, written by our own code: no matplotlib, no fonts, no network.

Two pictures the reports need:

- :func:`error_plot`: one metric per tensor against execution order, log scale, with
  each tensor's threshold, step boundaries and the first divergence marked;
- :func:`heatmap`: rows of per-token errors (tokens across), log colour scale.

Every mark carries a ``<title>``, so hovering shows the tensor and value in any
browser. Colours come from :func:`colormap` (a perceptual dark-blue -> yellow ramp),
shared with the PNG writer of ``dumpcmp show --plot``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence

from comparator.report.text import printable

STATUS_COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "skip": "#f9a825", "error": "#8e24aa"}
# Stops of a viridis-like ramp (dark blue -> green -> yellow), interpolated linearly.
_RAMP = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def esc(text: object) -> str:
    return html.escape(printable(text), quote=True)


def colormap(fraction: float) -> tuple[int, int, int]:
    """RGB at ``fraction`` (0..1, clamped) along the ramp."""
    if math.isnan(fraction):
        return (200, 200, 200)
    fraction = min(1.0, max(0.0, fraction)) * (len(_RAMP) - 1)
    low = min(int(fraction), len(_RAMP) - 2)
    part = fraction - low
    a, b = _RAMP[low], _RAMP[low + 1]
    return tuple(round(x + (y - x) * part) for x, y in zip(a, b))  # type: ignore[return-value]


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


@dataclass(frozen=True, kw_only=True)
class LogScale:
    """Maps positive values to pixels on a log10 axis; zero and below sit on the floor."""

    low_exp: int
    high_exp: int
    pixel_low: float  # pixel of 10**low_exp
    pixel_high: float  # pixel of 10**high_exp

    @classmethod
    def fit(cls, values: Sequence[float], pixel_low: float, pixel_high: float, *, floor_exp: int = -16) -> "LogScale":
        positive = [v for v in values if v > 0 and math.isfinite(v)]
        if not positive:
            return cls(low_exp=-8, high_exp=0, pixel_low=pixel_low, pixel_high=pixel_high)
        low = max(floor_exp, math.floor(math.log10(min(positive))))
        high = math.ceil(math.log10(max(positive)))
        if high <= low:
            high = low + 1
        return cls(low_exp=low, high_exp=high, pixel_low=pixel_low, pixel_high=pixel_high)

    def fraction(self, value: float) -> float:
        if not value > 0:
            return 0.0
        if math.isinf(value):
            return 1.0
        return min(1.0, max(0.0, (math.log10(value) - self.low_exp) / (self.high_exp - self.low_exp)))

    def __call__(self, value: float) -> float:
        return self.pixel_low + (self.pixel_high - self.pixel_low) * self.fraction(value)


@dataclass(frozen=True, kw_only=True)
class PlotPoint:
    value: float | None  # None: not measured (skipped, errored, no such metric)
    limit: float | None  # the threshold this tensor was judged by, if any
    status: str
    step: int
    label: str  # tooltip text
    hollow: bool = False  # a propagated failure, or a stats-only value


def error_plot(points: Sequence[PlotPoint], *, metric: str, marked: int | None = None, marked_label: str = "",
               width: int = 960, height: int = 320) -> str:
    """``metric`` of every tensor (log y) against execution order, threshold and first divergence marked."""
    left, right, top, bottom = 64, 16, 22, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [p.value for p in points if p.value is not None] + [p.limit for p in points if p.limit is not None]
    unmeasured = [p for p in points if p.value is None]
    # NOTE: results without a metric (shape mismatch, one side only, load errors) get a
    # lane of their own above the plot: a failure must never look like a pass at a glance.
    lane = 26 if unmeasured else 0
    top += lane
    plot_h -= lane
    fitted = LogScale.fit(values, top + plot_h, top)
    # One decade of headroom: a threshold at the top decade stays visible inside the frame.
    scale = LogScale(low_exp=fitted.low_exp, high_exp=fitted.high_exp + 1, pixel_low=top + plot_h, pixel_high=top)
    n = max(1, len(points))

    def x_of(index: int) -> float:
        return left + plot_w * (index + 0.5) / n

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(metric)} against execution order">']
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#bbb"/>')
    if lane:
        failing = sum(p.status in ("fail", "error") for p in unmeasured)
        parts.append(f'<rect x="{left}" y="{top - lane + 2}" width="{plot_w}" height="{lane - 6}" fill="#fff3f3" '
                     'stroke="#e0b4b4" class="no-metric-lane"/>')
        parts.append(f'<text x="{left - 6}" y="{top - lane / 2 + 3:.1f}" text-anchor="end" class="tick">no metric</text>')
        parts.append(f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end" class="mark">'
                     f'× {len(unmeasured)} without a metric ({failing} failing)</text>')
    # Decades on the y axis.
    zeros = any(p.value is not None and not p.value > 0 for p in points)
    for exp in range(scale.low_exp, scale.high_exp + 1):
        y = scale(10.0 ** exp)
        floor = "≤" if zeros and exp == scale.low_exp else ""  # zeros sit on the floor
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{floor}1e{exp}</text>')
    parts.append(f'<text x="14" y="{top + plot_h / 2:.0f}" transform="rotate(-90 14 {top + plot_h / 2:.0f})" '
                 f'text-anchor="middle" class="axis">{esc(metric)} (log)</text>')
    # Step boundaries.
    previous_step = None
    for index, point in enumerate(points):
        if point.step != previous_step:
            x = left + plot_w * index / n
            parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#ccc" '
                         'stroke-dasharray="2 3"/>')
            parts.append(f'<text x="{x + 3:.1f}" y="{top + plot_h + 14}" class="tick">step {point.step}</text>')
            previous_step = point.step
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 8}" text-anchor="middle" class="axis">'
                 'execution order (each step: its tensors layer by layer)</text>')
    # Threshold: each tensor's own limit, joined as a step line.
    segments: list[str] = []
    for index, point in enumerate(points):
        if point.limit is None or not point.limit > 0:
            continue
        y = scale(point.limit)
        segments.append(f"M{left + plot_w * index / n:.1f},{y:.1f}H{left + plot_w * (index + 1) / n:.1f}")
    if segments:
        parts.append(f'<path d="{"".join(segments)}" stroke="#ef6c00" stroke-width="1.5" stroke-dasharray="5 3" '
                     'fill="none"><title>threshold (each tensor\'s limit)</title></path>')
    # First divergence.
    if marked is not None and 0 <= marked < len(points):
        x = x_of(marked)
        parts.append(f'<line x1="{x:.1f}" y1="{top - lane}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#c62828" '
                     'stroke-width="1.5" class="first-divergence-mark"/>')
        anchor = "end" if x > left + plot_w * 0.6 else "start"
        dx = -4 if anchor == "end" else 4
        parts.append(f'<text x="{x + dx:.1f}" y="{top - lane - 6}" text-anchor="{anchor}" class="mark">'
                     f'first divergence: {esc(marked_label)}</text>')
    # Points.
    radius = 3.2 if n <= 400 else 2.2
    for index, point in enumerate(points):
        if point.value is None:
            y = top - lane / 2 - 1
            colour = STATUS_COLOURS.get(point.status, "#777")
            x = x_of(index)
            parts.append(f'<path d="M{x - 3.5:.1f},{y - 3.5:.1f}l7,7M{x - 3.5:.1f},{y + 3.5:.1f}l7,-7" stroke="{colour}" '
                         f'stroke-width="2" class="no-metric"><title>{esc(point.label)}: no metric</title></path>')
            continue
        y = scale(point.value)
        colour = STATUS_COLOURS.get(point.status, "#777")
        fill = "white" if point.hollow else colour
        parts.append(f'<circle cx="{x_of(index):.1f}" cy="{y:.1f}" r="{radius}" fill="{fill}" stroke="{colour}">'
                     f'<title>{esc(point.label)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def heatmap(rows: Sequence[tuple[str, Sequence[float | None]]], *, value_name: str, column_name: str = "token",
            highlight_row: int | None = None, max_width: int = 960, scale: "LogScale | None" = None) -> str:
    """Rows of values (log colour), one cell per column; None cells are grey.

    Heatmaps shown side by side should share one ``scale`` (see :func:`heatmap_scale`), so
    that a colour means the same value in each.
    """
    label_w = min(260, 8 + 6 * max((len(label) for label, _ in rows), default=10))
    columns = max((len(values) for _, values in rows), default=0)
    legend_w = 90
    cell_w = max(3.0, min(22.0, (max_width - label_w - legend_w) / max(1, columns)))
    cell_h = 16
    top, bottom = 8, 30
    width = int(label_w + cell_w * columns + legend_w)
    height = int(top + cell_h * len(rows) + bottom)
    scale = scale or heatmap_scale([row for _, row in rows])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(value_name)} per {esc(column_name)}">']
    for r, (label, row) in enumerate(rows):
        y = top + r * cell_h
        weight = ' font-weight="bold"' if r == highlight_row else ""
        parts.append(f'<text x="{label_w - 6}" y="{y + cell_h - 4}" text-anchor="end" class="tick"{weight}>'
                     f'{esc(label)}</text>')
        for c, value in enumerate(row):
            fraction = scale.fraction(value) if value is not None else math.nan
            colour = hex_colour(colormap(fraction))
            parts.append(f'<rect x="{label_w + c * cell_w:.1f}" y="{y}" width="{cell_w:.1f}" height="{cell_h - 1}" '
                         f'fill="{colour}"><title>{esc(label)} {esc(column_name)} {c}: {esc(value_name)} '
                         f'{fmt(value)}</title></rect>')
        if r == highlight_row:
            parts.append(f'<rect x="{label_w - 1}" y="{y - 1}" width="{cell_w * len(row) + 2:.1f}" '
                         f'height="{cell_h + 1}" fill="none" stroke="#c62828" stroke-width="1.5"/>')
    # Column ticks: about ten.
    step = max(1, math.ceil(columns / 10))
    for c in range(0, columns, step):
        x = label_w + (c + 0.5) * cell_w
        parts.append(f'<text x="{x:.1f}" y="{top + len(rows) * cell_h + 12}" text-anchor="middle" class="tick">{c}</text>')
    parts.append(f'<text x="{label_w}" y="{height - 4}" class="axis">{esc(column_name)} →</text>')
    # Colour legend.
    lx = width - legend_w + 14
    bar_h = max(40, cell_h * len(rows) - 10)
    for i in range(20):
        colour = hex_colour(colormap(1 - i / 19))
        parts.append(f'<rect x="{lx}" y="{top + i * bar_h / 20:.1f}" width="12" height="{bar_h / 20 + 0.5:.1f}" '
                     f'fill="{colour}"/>')
    decades = scale.high_exp - scale.low_exp
    every = max(1, math.ceil(decades / max(1, int(bar_h // 12))))  # labels at least 12 px apart
    for exp in range(scale.high_exp, scale.low_exp - 1, -every):
        tick_y = top + bar_h * (scale.high_exp - exp) / decades
        floor = "≤" if exp == scale.low_exp else ""
        parts.append(f'<line x1="{lx + 12}" y1="{tick_y:.1f}" x2="{lx + 15}" y2="{tick_y:.1f}" stroke="#666"/>')
        parts.append(f'<text x="{lx + 17}" y="{tick_y + 4:.1f}" class="tick">{floor}1e{exp}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heatmap_scale(rows: Sequence[Sequence[float | None]]) -> LogScale:
    """One log colour scale for every value of ``rows`` (pass it to each heatmap drawn side by side)."""
    return LogScale.fit([v for row in rows for v in row if v is not None], 0.0, 1.0, floor_exp=-12)


def histogram(values: Sequence[float], *, bins: int = 40, title: str = "", width: int = 480, height: int = 200) -> str:
    """Counts of ``values`` in equal-width bins (linear axes)."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    counts = [0] * bins
    for value in finite:
        counts[min(bins - 1, int((value - low) / (high - low) * bins))] += 1
    left, bottom, top = 40, 24, 18
    plot_w, plot_h = width - left - 8, height - top - bottom
    peak = max(counts) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<text x="{left}" y="12" class="axis">{esc(title)}</text>']
    for i, count in enumerate(counts):
        bar = plot_h * count / peak
        parts.append(f'<rect x="{left + plot_w * i / bins:.1f}" y="{top + plot_h - bar:.1f}" '
                     f'width="{plot_w / bins - 1:.1f}" height="{bar:.1f}" fill="#3b528b"><title>'
                     f'[{fmt(low + (high - low) * i / bins)}, {fmt(low + (high - low) * (i + 1) / bins)}): {count}'
                     '</title></rect>')
    parts.append(f'<text x="{left}" y="{height - 6}" class="tick">{fmt(low)}</text>')
    parts.append(f'<text x="{width - 8}" y="{height - 6}" text-anchor="end" class="tick">{fmt(high)}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="tick">{peak}</text>')
    parts.append("</svg>")
    return "".join(parts)
