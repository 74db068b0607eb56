"""The graft verdict (gone, moved, unchanged) on hand-built results in execution order."""

from __future__ import annotations

import dataclasses
import io
import json

from rich.console import Console

from comparator.judge.graft import graft_verdict, mark_grafted
from comparator.matching import tags_key
from comparator.report.html import render_html
from comparator.report.json import render_json
from comparator.report.junit import render_junit
from comparator.report.table import render_table
from comparator.results import NotMeasured, Report, Summary, TensorResult


def result(name: str, step: int, status: str, layer: int = 0, hint: str | None = None) -> TensorResult:
    tags = {"layer": layer}
    return TensorResult(name=name, step=step, tags=tags, status=status, hint=hint,  # type: ignore[arg-type]
                        measurement=NotMeasured(why="error"), keys=((name, step, tags_key(tags)),))


def key(name: str, step: int, layer: int = 0):
    return (name, step, tags_key({"layer": layer}))


def test_nothing_grafted_gives_no_verdict():
    assert graft_verdict([result("a", 0, "fail")], frozenset()) is None


def test_gone_moved_and_unchanged():
    grafted = frozenset({key("moe", 0, 1), key("moe", 1, 1)})
    gone = [result("attn", 0, "pass", 1), result("moe", 0, "pass", 1), result("logits", 0, "pass")]
    verdict = graft_verdict(gone, grafted)
    assert verdict.outcome == "gone" and verdict.graft_point == "moe[layer=1]@step0" and verdict.grafted == 1

    moved = [result("moe", 0, "pass", 1), result("mlp", 0, "fail", 2, hint="target = 2 x baseline"),
             result("logits", 0, "fail")]
    verdict = graft_verdict(moved, grafted)
    assert verdict.outcome == "moved" and verdict.next_divergence.name == "mlp"
    assert "target = 2 x baseline" in verdict.detail

    upstream = [result("attn", 0, "fail", 1), result("moe", 0, "pass", 1)]
    assert graft_verdict(upstream, grafted).outcome == "unchanged"
    assert "upstream" in graft_verdict(upstream, grafted).detail

    other_step = [result("moe", 0, "pass", 1), result("moe", 2, "fail", 1)]
    verdict = graft_verdict(other_step, grafted)
    assert verdict.outcome == "unchanged" and "drop step=" in verdict.detail

    # the same divergence as without the graft: the graft point was not the cause
    healthy = [result("moe", 0, "pass", 1), result("mlp", 0, "fail", 2)]
    assert graft_verdict(healthy, grafted, previous="mlp[layer=2]@step0").outcome == "unchanged"


def test_renderers_show_grafted_tensors_and_the_verdict():
    grafted = frozenset({key("moe", 0, 1)})
    results = tuple(mark_grafted([result("attn", 0, "pass", 1), result("moe", 0, "pass", 1),
                                  result("mlp", 0, "fail", 2, hint="target = 2 x baseline")], grafted))
    assert [r.grafted for r in results] == [False, True, False]
    verdict = graft_verdict(results, grafted)
    report = Report(baseline="/b", target="/t", aligner="none", exit_code=1, exit_reason="1 failed",
                    summary=Summary(total=3, passed=1, failed=1, skipped=0, errored=0, grafted=1),
                    first_divergence=None, results=results, graft=verdict)
    data = json.loads(render_json(report))
    assert [r["grafted"] for r in data["results"]] == [False, True, False]
    assert data["graft"]["outcome"] == "moved" and data["graft"]["next_divergence"]["name"] == "mlp"
    out = io.StringIO()
    render_table(report, Console(file=out, width=200, force_terminal=False))
    text = out.getvalue()
    assert "grafted" in text.splitlines()[[i for i, line in enumerate(text.splitlines()) if " moe " in line][0]]
    assert "1 grafted" in text and "graft: moved: the graft at moe[layer=1]@step0" in text
    junit = render_junit(report)
    assert 'skipped="1"' in junit and "grafted: the target went on with the baseline's value here" in junit
    assert 'name="graft" value="moved: the graft at moe[layer=1]@step0' in junit
    page = render_html(report)
    assert "<h2>Graft: moved</h2>" in page and ">grafted</td>" in page
    nothing = dataclasses.replace(report, graft=None, results=tuple(dataclasses.replace(r, grafted=False)
                                                                     for r in results))
    assert json.loads(render_json(nothing))["graft"] is None
    assert 'id="graft"' not in render_html(nothing)
