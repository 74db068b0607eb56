"""The HTML report (``--format html --output report.html``): one self-contained file.

Readable offline and attachable to a CI run: no network fetch of any kind (a
Content-Security-Policy forbids them, so a stray one fails loudly in a browser
instead of leaking). Sections, top to bottom:

1. the verdict (exit code and why) and the summary counts;
2. the first divergence with its reason, hint, worst element and token, and sides;
3. a plot of the error metric against execution order, with each tensor's
   threshold and the first divergence marked (inline SVG, comparator/report/svg.py);
4. a per-token error heatmap of the divergent tensor: across its steps, then every
   tensor of its step (how the error spreads through the layers);
5. a sortable, filterable table of every tensor (a few lines of inline JS);
6. the run fingerprints: commands, modes, versions, parallel sizes, problems.
"""

from __future__ import annotations

import datetime
import math
import shlex
from typing import Sequence

from comparator.fingerprint import RunFingerprint
from comparator.report.runs import runs_html
from comparator.results import Pair, Report, TensorResult
from comparator.report.svg import PlotPoint, error_plot, esc, fmt, heatmap, heatmap_scale

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
VERDICTS = {0: ("PASS", "pass"), 1: ("FAIL", "fail"), 3: ("NOTHING COMPARED", "skip")}
TABLE_METRICS = ("rel_diff", "rel_l2", "cosine", "norm_ratio", "max_abs")
# Heatmap rows at most: a step of a big model has thousands of tensors.
MAX_HEATMAP_ROWS = 48

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#222}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
.verdict{display:flex;gap:16px;align-items:center;padding:12px 16px;border-radius:6px;margin:12px 0}
.verdict.pass{background:#e8f5e9;border:1px solid #2e7d32}.verdict.fail{background:#ffebee;border:1px solid #c62828}
.verdict.skip{background:#fff8e1;border:1px solid #f9a825}
.verdict .word{font-size:22px;font-weight:700}.counts span{margin-right:12px}
.card{border:1px solid #c62828;border-radius:6px;padding:10px 16px;background:#fff}
.card dt{font-weight:600;float:left;clear:left;width:120px}.card dd{margin:0 0 4px 128px}
.hint{color:#0d47a1;font-weight:600}
.plot text,.heatmap text,svg text{font:11px system-ui,sans-serif;fill:#444}svg text.mark{fill:#c62828;font-weight:600}
svg text.axis{font-size:12px;fill:#222}
table{border-collapse:collapse;width:100%}th,td{padding:3px 6px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f5f5f5;cursor:pointer;user-select:none;position:sticky;top:0;white-space:nowrap}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-family:ui-monospace,monospace;font-size:12.5px;white-space:nowrap}
tr.st-pass td.status{color:#2e7d32}tr.st-fail td.status{color:#c62828;font-weight:600}
tr.st-skip td.status{color:#b28704}tr.st-error td.status{color:#8e24aa}
tr.first{background:#ffebee}tr.propagated td{color:#777}
td.reason{max-width:420px;font-size:12.5px}
.filters{display:flex;gap:12px;align-items:center;margin:8px 0}.filters input{width:320px;padding:4px}
.runs{display:grid;grid-template-columns:1fr 1fr;gap:16px}.runs table td:first-child{font-weight:600;width:120px}
.muted{color:#777}.legend span{margin-right:14px}.dot{display:inline-block;width:9px;height:9px;border-radius:50%}
"""

# NOTE: the first script runs in <head>, before anything can be fetched: it counts
# failed loads and CSP violations into <html data-*>, so a headless browser's DOM dump
# shows whether the page tried the network. The report itself never does.
_HEAD_SCRIPT = """
(function(){var d=document.documentElement;d.dataset.loadErrors="0";d.dataset.cspViolations="0";
window.addEventListener("error",function(e){if(e.target&&e.target!==window){d.dataset.loadErrors=String(+d.dataset.loadErrors+1)}},true);
document.addEventListener("securitypolicyviolation",function(){d.dataset.cspViolations=String(+d.dataset.cspViolations+1)});
window.addEventListener("load",function(){var r=performance.getEntriesByType("resource");d.dataset.resources=String(r.length);d.dataset.ready="1"});})();
"""

_TABLE_SCRIPT = """
(function(){
var table=document.getElementById("tensors"),body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
var text=document.getElementById("filter-text"),status=document.getElementById("filter-status"),shown=document.getElementById("shown");
function apply(){var q=text.value.toLowerCase(),s=status.value,n=0;
 rows.forEach(function(r){var ok=(!q||r.dataset.search.indexOf(q)>=0)&&(s==="all"||(s==="notpass"?r.dataset.status!=="pass":r.dataset.status===s));
  r.style.display=ok?"":"none";if(ok)n++});shown.textContent=n+" of "+rows.length+" tensors shown";}
text.addEventListener("input",apply);status.addEventListener("change",apply);
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,col){th.addEventListener("click",function(){
 var asc=!th.classList.contains("sorted-asc");Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.classList.remove("sorted-asc","sorted-desc")});
 th.classList.add(asc?"sorted-asc":"sorted-desc");
 rows.sort(function(a,b){var x=a.cells[col].dataset.v,y=b.cells[col].dataset.v,nx=parseFloat(x),ny=parseFloat(y),c;
  if(x===""&&y==="")c=0;else if(x==="")c=1;else if(y==="")c=-1;else if(!isNaN(nx)&&!isNaN(ny))c=nx-ny;else c=x<y?-1:x>y?1:0;
  return asc?c:-c});
 rows.forEach(function(r){body.appendChild(r)})})});
apply();document.documentElement.dataset.tableReady="1";})();
"""


def render_html(report: Report, *, generated: datetime.datetime | None = None) -> str:
    """The whole page as one string (UTF-8 text, no external references), from the report alone."""
    generated = generated or datetime.datetime.now(tz=datetime.timezone.utc)
    from dumper.format import TOOL_VERSION

    first = report.first_divergence
    title = f"dumpcmp: {_verdict(report)[0]}" + (f" at {first.name}" if first is not None else "")
    sections = [
        _header(report, generated, TOOL_VERSION),
        _first_divergence(report),
        _graft_section(report),
        _plot_section(report),
        _heatmap_section(report),
        _table_section(report),
        _runs_section(report, report.fingerprints),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<script>{_HEAD_SCRIPT}</script>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + f"\n<script>{_TABLE_SCRIPT}</script>\n</body>\n</html>\n"
    )


# ------------------------------------------------------------------------ sections
def _verdict(report: Report) -> tuple[str, str]:
    return VERDICTS.get(report.exit_code, ("ERROR", "fail"))


def _header(report: Report, generated: datetime.datetime, version: str) -> str:
    word, css = _verdict(report)
    s = report.summary
    stats_only = sum(r.stats_only for r in report.results)
    counts = (f'<span>{s.total} tensors</span><span>{s.passed} passed</span><span>{s.failed} failed</span>'
              f'<span>{s.skipped} skipped</span><span>{s.errored} errors</span>')
    if s.allowed_failures or s.allowed_skips:
        counts += f"<span>({s.allowed_failures} failures and {s.allowed_skips} skips allowed)</span>"
    if stats_only:
        counts += f'<span class="muted">{stats_only} compared from stats only</span>'
    if s.partially_compared or s.nothing_compared:
        counts += (f'<span>{s.compared_fraction:.1%} of rows compared ({s.partially_compared} on part of their rows, '
                   f'{s.nothing_compared} on none; --min-compared {s.min_compared:g})</span>')
    return (
        f'<header><h1>dumpcmp compare</h1><div class="mono">baseline <b>{esc(report.baseline)}</b> &nbsp; target '
        f'<b>{esc(report.target)}</b> &nbsp; aligner {esc(report.aligner)}'
        + (f' <span class="muted" id="aligner-reason">({esc(report.aligner_reason)})</span>' if report.aligner_reason else "")
        + (f" &nbsp; thresholds {esc(report.thresholds)}" if report.thresholds else "")
        + f'</div><section id="verdict" class="verdict {css}"><span class="word">{word}</span>'
        f'<span>exit {report.exit_code}: {esc(report.exit_reason)}</span></section>'
        f'<div class="counts" id="summary">{counts}</div>'
        f'<div class="muted">generated {generated.isoformat(timespec="seconds")} by dumpcmp {esc(version)}</div></header>'
    )


def _first_divergence(report: Report) -> str:
    first = report.first_divergence
    if first is None:
        return ('<section id="first-divergence"><h2>First divergence</h2><p>None: no tensor failed'
                + (" (nothing was compared)" if report.summary.compared == 0 else "") + ".</p></section>")
    result = report.results[first.index]
    items: list[tuple[str, str]] = [
        ("tensor", f'<a href="#row-{first.index}" class="mono" id="first-divergence-name">{esc(result.label)}</a>'),
        ("origin", esc(first.origin + (f": {first.origin_detail}" if first.origin_detail else ""))),
    ]
    if first.reason:
        items.append(("why", esc(first.reason)))
    if first.hint:
        items.append(("hint", f'<span class="hint">{esc(first.hint)}</span>'))
    metrics = result.metrics
    if metrics is not None and metrics.max_abs_index:
        items.append(("max |t-b|", esc(f"{fmt(metrics.max_abs)} at {list(metrics.max_abs_index)} (baseline "
                                       f"{metrics.max_abs_baseline:.6g}, target {metrics.max_abs_target:.6g})")))
        if metrics.worst_token is not None:
            items.append(("worst token", esc(f"{metrics.worst_token[0]} (rel_l2 {fmt(metrics.worst_token[1])})")))
    if result.judgement is not None:
        required = ", ".join(limit.describe() for m, limit in result.judgement.required.items()
                             if m in result.judgement.failed)
        items.append(("judged by", esc(result.judgement.rule + (f"; would pass with {required}" if required else ""))))
    if result.stats_only:
        items.append(("compared", "from index stats and checksums only (a side was dumped in stats mode)"))
    for label, side in (("baseline", result.baseline), ("target", result.target)):
        if side is not None:
            items.append((label, esc(f"{side.shape and list(side.shape)} {side.dtype} ranks {list(side.ranks)} "
                                     f"dims {side.dims!r} ({side.plan})")))
    for note in result.notes:
        items.append(("note", esc(note)))
    trace = report.collectives
    if trace is not None:
        lines = [esc(line) for line in trace.lines()] + [f'<span class="hint">{esc(d)}</span>' for d in trace.differences]
        items.append(("collectives", '<span class="mono">' + "<br>".join(lines) + "</span>"))
    body = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in items)
    return f'<section id="first-divergence"><h2>First divergence</h2><dl class="card">{body}</dl></section>'


def _plot_value(result: TensorResult, metric: str) -> tuple[float | None, float | None]:
    """(value, limit) of the plotted metric for one result."""
    judgement = result.judgement
    if metric == "rel_diff":
        value = result.metrics.rel_diff if result.metrics is not None else None
        limit = judgement.limits.get("rel_diff") if judgement is not None else None
        return value, limit.high if limit is not None else None
    if result.stats is None:
        return None, None
    limit = judgement.limits.get("norm_ratio") if judgement is not None else None
    bound = (max(abs(limit.low - 1.0), abs(limit.high - 1.0))
             if limit is not None and limit.low is not None and limit.high is not None else None)
    return abs(result.stats.norm_ratio - 1.0), bound


def _plot_section(report: Report) -> str:
    if not report.results:
        return ""
    metric = "rel_diff" if any(r.metrics is not None for r in report.results) else "|norm_ratio - 1|"
    points = []
    for index, result in enumerate(report.results):
        value, limit = _plot_value(result, metric)
        if value is not None and math.isnan(value):
            value = None
        tooltip = f"#{index} {result.label}: {result.status}, {metric} {fmt(value)}"
        if limit is not None:
            tooltip += f" (limit {fmt(limit)})"
        points.append(PlotPoint(value=value, limit=limit, status=result.status, step=result.step, label=tooltip,
                                hollow=result.origin == "propagated" or (metric == "rel_diff" and result.stats_only)))
    first = report.first_divergence
    svg = error_plot(points, metric=metric, marked=first.index if first is not None else None,
                     marked_label=report.results[first.index].label if first is not None else "")
    legend = "".join(f'<span><i class="dot" style="background:{c}"></i> {s}</span>'
                     for s, c in (("pass", "#2e7d32"), ("fail", "#c62828"), ("skip", "#f9a825"), ("error", "#8e24aa")))
    legend += ('<span>○ propagated failure</span><span style="color:#ef6c00">- - threshold</span>'
               '<span style="color:#c62828">| first divergence</span><span style="color:#c62828">× no metric (top lane: shape mismatch, one side only, unreadable)</span>')
    note = (" Every comparison here was made from stats only: the metric is the norm ratio's distance from 1."
            if metric != "rel_diff" else "")
    return (f'<section id="error-plot"><h2>Error against execution order</h2><p class="muted">{esc(metric)} of each '
            f"tensor, in the order the target ran them; hover a point for its name.{note}</p>"
            f'<div class="legend">{legend}</div>{svg}</section>')


def _per_token(result: TensorResult) -> Sequence[float | None] | None:
    metrics = result.metrics
    if metrics is None or metrics.per_token_rel_l2 is None:
        return None
    return [v if math.isfinite(v) or math.isinf(v) else None for v in metrics.per_token_rel_l2]


def _graft_section(report: Report) -> str:
    """What a graft in the target did (dumpcmp run --graft): gone, moved or unchanged."""
    graft = report.graft
    if graft is None:
        return ""
    return (f'<section id="graft"><h2>Graft: {esc(graft.outcome)}</h2><p>{esc(graft.detail)}</p>'
            f'<p class="muted">{graft.grafted} tensor(s) grafted from the baseline: they agree by construction '
            "and are not counted as passes.</p></section>")


def _heatmap_section(report: Report) -> str:
    first = report.first_divergence
    head = '<section id="token-heatmap"><h2>Per-token error of the divergent tensor</h2>'
    if first is None:
        return head + "<p>No divergence: nothing to show.</p></section>"
    divergent = report.results[first.index]
    if _per_token(divergent) is None:
        why = ("it was compared from stats only" if divergent.stats_only
               else "its dims name no token dim ('t')" if divergent.metrics is not None
               else "it has no metrics (" + (divergent.reason or divergent.status) + ")")
        return head + f"<p>No per-token errors for {esc(divergent.label)}: {esc(why)}.</p></section>"
    parts = [head, f'<p class="muted">rel_l2 of each token (|t-b|/|b| over its row), log colour scale; hover a cell '
                   f"for its value.</p><h3>{esc(divergent.name)} at every step</h3>"]
    across_steps = [(f"step {r.step}", _per_token(r)) for r in report.results
                    if r.name == divergent.name and r.tags == divergent.tags and _per_token(r) is not None]
    highlight = next((i for i, (label, _) in enumerate(across_steps) if label == f"step {divergent.step}"), None)
    step_rows = [(label, values) for label, values in across_steps if values is not None]
    tokens = len(_per_token(divergent) or ())
    same_step = [(i, r) for i, r in enumerate(report.results)
                 if r.step == divergent.step and len(_per_token(r) or ()) == tokens]
    window: list[tuple[int, TensorResult]] = []
    if len(same_step) > 1:
        around = [i for i, (index, _) in enumerate(same_step) if index == first.index][0]
        start = max(0, min(around - MAX_HEATMAP_ROWS // 4, len(same_step) - MAX_HEATMAP_ROWS))
        window = same_step[start : start + MAX_HEATMAP_ROWS]
    tensor_rows = [(r.label.split("@")[0], _per_token(r) or ()) for _, r in window]
    # NOTE: one colour scale for both heatmaps: the same colour is the same error in each.
    scale = heatmap_scale([values for _, values in step_rows] + [values for _, values in tensor_rows])
    parts.append(heatmap(step_rows, value_name="rel_l2", highlight_row=highlight, scale=scale))
    if window:
        parts.append(f"<h3>Every tensor of step {divergent.step} with {tokens} tokens, in execution order</h3>")
        parts.append(heatmap(tensor_rows, value_name="rel_l2", scale=scale,
                             highlight_row=next(i for i, (index, _) in enumerate(window) if index == first.index)))
    parts.append("</section>")
    return "".join(parts)


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="num" data-v="">-</td>'
    number = ("Infinity" if value > 0 else "-Infinity") if math.isinf(value) else repr(float(value))  # JS parseFloat
    return f'<td class="num" data-v="{number}">{fmt(value)}</td>'


def _table_section(report: Report) -> str:
    first_index = report.first_divergence.index if report.first_divergence is not None else None
    header = ["#", "step", "name", "tags", "status", "compared"] + list(TABLE_METRICS) + ["hint / reason"]
    rows = []
    for index, result in enumerate(report.results):
        metrics = result.metrics.as_dict() if result.metrics is not None else {}
        if result.stats is not None:
            metrics = {"norm_ratio": result.stats.norm_ratio}
        tags = " ".join(f"{k}={v}" for k, v in sorted(result.tags.items()))
        status = ("grafted" if result.grafted and result.status == "pass" else result.status) + (
            " (grafted)" if result.grafted and result.status != "pass" else "") + (
            " (allowed)" if result.allowed else "") + (" ^" if result.origin == "propagated" else "")
        reason = result.hint or result.reason or (result.notes[0] if result.notes else "")
        if result.hint and result.reason:
            reason = f"{result.hint} ({result.reason})"
        search = " ".join([result.name, tags, result.status, reason]).lower()
        classes = [f"st-{result.status}"] + (["first"] if index == first_index else []) + (
            ["propagated"] if result.origin == "propagated" else [])
        cells = [
            f'<td class="num" data-v="{index}">{index}</td>', f'<td class="num" data-v="{result.step}">{result.step}</td>',
            f'<td class="mono" data-v="{esc(result.name)}">{esc(result.name)}</td>',
            f'<td class="mono" data-v="{esc(tags)}">{esc(tags) or "-"}</td>',
            f'<td class="status" data-v="{esc(result.status)}">{esc(status)}</td>',
            f'<td data-v="{"stats" if result.stats_only else "tensor"}">{"stats" if result.stats_only else "tensor"}</td>',
        ]
        cells += [_cell(metrics.get(m)) for m in TABLE_METRICS]
        cells.append(f'<td class="reason" data-v="{esc(reason)}">{esc(reason)}</td>')
        rows.append(f'<tr id="row-{index}" class="{" ".join(classes)}" data-status="{result.status}" '
                    f'data-search="{esc(search)}">{"".join(cells)}</tr>')
    options = "".join(f'<option value="{v}">{label}</option>' for v, label in (
        ("all", "every status"), ("notpass", "not passing"), ("fail", "fail"), ("skip", "skip"), ("error", "error"),
        ("pass", "pass")))
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    return (
        '<section id="all-tensors"><h2>Every tensor</h2><div class="filters">'
        '<input id="filter-text" type="search" placeholder="filter: name, tag, hint..." aria-label="filter">'
        f'<select id="filter-status" aria-label="status">{options}</select><span id="shown" class="muted"></span></div>'
        f'<p class="muted">Click a column to sort. "^": a propagated failure (a tensor it consumes did not pass). '
        f'"stats": compared from index stats and checksums only.</p>'
        f'<table id="tensors"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def _runs_section(report: Report, fingerprints: Pair[RunFingerprint] | None) -> str:
    if fingerprints is None:
        return ""
    columns = []
    for side, fp in fingerprints.items():
        rows = [("path", f'<span class="mono">{esc(fp.path)}</span>'), ("format", esc(fp.format))]
        if fp.command:
            rows.append(("command", f'<code>{esc(shlex.join(fp.command))}</code>'))
        for label, value in (("mode", fp.mode), ("engine", fp.engine), ("world size", fp.world_size),
                             ("started", fp.start_time), ("run id", fp.run_id), ("dumpcmp", fp.tool_version)):
            if value is not None:
                rows.append((label, esc(value)))
        if fp.model:
            model = fp.model
            rows.append(("model", esc(" ".join(f"{k}={model[k]}" for k in ("architecture", "dtype", "quantization",
                                                                            "config_hash", "weights") if model.get(k)))))
        if fp.parallel:
            rows.append(("parallel", esc(", ".join(f"{axis}={size}" for axis, size in fp.parallel.items()))))
        if fp.ranks:
            statuses = ", ".join(f"{n} {status}" for status, n in sorted(fp.rank_status.items()))
            rows.append(("ranks", esc(f"{fp.ranks} ({statuses})")))
        if fp.hosts:
            rows.append(("hosts", esc(", ".join(fp.hosts))))
        for problem in report.problems.get(side, ()):
            rows.append(("problem", f'<span style="color:#b28704">{esc(problem)}</span>'))
        body = "".join(f"<tr><td>{label}</td><td>{value}</td></tr>" for label, value in rows)
        columns.append(f'<div><h3>{side}</h3><table class="fingerprint" data-side="{side}">{body}</table></div>')
    return f'<section id="runs"><h2>Runs</h2><div class="runs">{"".join(columns)}</div>{runs_html(report)}</section>'


__all__ = ["render_html"]
