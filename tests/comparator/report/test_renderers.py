"""Every renderer is a pure function of a Report: tested on a hand-built one, with the disk closed.

The Report holds everything (results, the collective trace, the runs' fingerprints);
its run paths do not exist, and while rendering, opening or listing any file raises.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import xml.etree.ElementTree as ET

import pytest
import torch
from rich.console import Console

from comparator.collectives import CollectiveCount, CollectiveTrace, RankCollectives
from comparator.fingerprint import RunFingerprint
from comparator.judge.metrics import compute_metrics
from comparator.judge.stats_only import PooledStats, StatsComparison
from comparator.judge.thresholds import Criteria, Limit
from comparator.judge.verdicts import judge
from comparator.report.html import render_html
from comparator.report.json import render_json
from comparator.report.junit import render_junit
from comparator.report.table import render_table
from comparator.results import (FirstDivergence, NotMeasured, Pair, Report, SideInfo, StatsMeasurement, Summary,
                                TensorMeasurement, TensorResult)

LIMITS = {"rel_diff": Limit(metric="rel_diff", high=1e-6), "norm_ratio": Limit(metric="norm_ratio", low=0.998, high=1.002)}
DIFFERENCE = "target rank 0: all_reduce(world, [5, 8]) x1 here; baseline rank 0: x0 (extra in the target)"


def _side(name: str) -> SideInfo:
    return SideInfo(name=name, steps=(0,), shape=(5, 8), dtype="float32", ranks=(0, 1), dims="t h # tp:replicated",
                    plan="pick one tp replica of 2, verify the rest")


def _tensor_result(name: str, layer: int, scale: float) -> TensorResult:
    baseline = torch.randn(5, 8, generator=torch.Generator().manual_seed(layer), dtype=torch.float64)
    metrics = compute_metrics(baseline, baseline * scale, token_dim=0)
    judgement = judge(TensorMeasurement(metrics=metrics), Criteria(rule="default (float32)", limits=LIMITS))
    failed = bool(judgement.failed)
    return TensorResult(
        name=name, step=0, tags={"layer": layer}, status="fail" if failed else "pass",
        measurement=TensorMeasurement(metrics=metrics, replica_disagreement={"tp": 0.0}), judgement=judgement,
        reason="rel_diff = 0.2 (limit: rel_diff <= 1e-06)" if failed else None,
        hint="target = 2 x baseline: looks like a duplicated reduction over a group of size 2" if failed else None,
        origin="source" if failed else None, sides=Pair(_side(name), _side(name)),
    )


def _pooled(l2: float) -> PooledStats:
    return PooledStats(numel=40, finite=40, mean=0.1, abs_mean=0.8 * l2, std=1.0, l2=l2, min=-2.0, max=2.0, nan=0,
                       inf=0, checksums=("1234abcd",), layout="|float32|[5, 8]")


def hand_built_report() -> Report:
    passing = _tensor_result("attn_output", 0, 1.0)
    failing = _tensor_result("moe_output", 1, 2.0)
    stats = TensorResult(
        name="router_logits", step=0, tags={"layer": 1}, status="pass",
        measurement=StatsMeasurement(stats=StatsComparison(
            baseline=_pooled(3.0), target=_pooled(3.0), norm_ratio=1.0, mean_diff=0.0, abs_mean_diff=0.0,
            checksum_match=True)),
        notes=("compared from index stats and checksums only (a side was dumped in stats mode)",),
    )
    skipped = TensorResult(name="input_ids", step=1, tags={}, status="skip", measurement=NotMeasured(why="one_side"),
                           reason="only in baseline: the target run has no input_ids at this step")
    results = (passing, stats, failing, skipped)
    calls = (CollectiveCount(op="all_reduce", axis="world", ranks=(0, 1), shape=(5, 8), dtype="float32", count=1,
                             caller=("moe.py:12",)),)
    trace = CollectiveTrace(
        target=(RankCollectives(side="target", rank=0, after="router_logits[layer=1]@step0",
                                before="moe_output[layer=1]@step0", calls=calls),),
        baseline=(RankCollectives(side="baseline", rank=0, after="router_logits[layer=1]@step0",
                                  before="moe_output[layer=1]@step0", calls=()),),
        differences=(DIFFERENCE,), traced={"baseline": True, "target": True},
    )
    fingerprint = RunFingerprint(path="/nonexistent/target", format="dumpcmp", mode="tensor",
                                 command=("python", "-m", "examples.moe_engine", "--ep", "2"), world_size=2, ranks=2)
    return Report(
        baseline="/nonexistent/baseline", target="/nonexistent/target", aligner="none",
        summary=Summary(total=4, passed=2, failed=1, skipped=1, errored=0),
        first_divergence=FirstDivergence(name="moe_output", step=0, tags={"layer": 1}, hint=failing.hint,
                                         origin="source", origin_detail="its inputs pass", reason=failing.reason,
                                         index=2),
        results=results, exit_code=1, exit_reason="1 tensor(s) failed or errored", collectives=trace,
        fingerprints=Pair(RunFingerprint(path="/nonexistent/baseline", format="dumpcmp", mode="tensor"), fingerprint),
    )


def _table(report: Report) -> str:
    out = io.StringIO()
    render_table(report, Console(file=out, width=200, force_terminal=False))
    return out.getvalue()


RENDERERS = {
    "json": render_json,
    "table": _table,
    "junit": render_junit,
    "html": lambda report: render_html(report, generated=__import__("datetime").datetime(2026, 1, 1)),
}


@pytest.fixture
def closed_disk(monkeypatch):
    """Opening, listing or stat-ing any path raises while the fixture is active."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a renderer touched the disk: {args[:1]}")

    def close() -> None:
        for module, name in ((builtins, "open"), (io, "open"), (os, "listdir"), (os, "scandir"), (os, "stat"),
                             (os.path, "exists"), (os.path, "isdir")):
            monkeypatch.setattr(module, name, refuse)

    return close


@pytest.mark.parametrize("fmt", list(RENDERERS))
def test_renderers_need_nothing_but_the_report(fmt, closed_disk):
    report = hand_built_report()
    render = RENDERERS[fmt]
    expected = render(report)  # warm up: lazy imports may read modules from disk
    closed_disk()
    assert render(report) == expected
    assert "moe_output" in expected


def test_json_of_a_hand_built_report():
    data = json.loads(render_json(hand_built_report()))
    assert data["summary"] == {"total": 4, "passed": 2, "failed": 1, "skipped": 1, "errored": 0,
                               "allowed_failures": 0, "allowed_skips": 0, "stats_only": 1,
                               # coverage fields (docs/routing.md): a hand-built Summary's defaults
                               "nothing_compared": 0, "partially_compared": 0, "compared_fraction": 1.0,
                               "min_compared": 0.0}
    first = data["first_divergence"]
    assert (first["name"], first["index"], first["collectives"]["differences"]) == ("moe_output", 2, [DIFFERENCE])
    moe, stats, skipped = data["results"][2], data["results"][1], data["results"][3]
    assert moe["metrics"]["norm_ratio"] == pytest.approx(2.0) and moe["metrics"]["cosine"] == pytest.approx(1.0)
    assert moe["judgement"]["failed"] == ["rel_diff", "norm_ratio"]
    assert stats["stats_only"] is True and stats["metrics"]["norm_ratio"] == 1.0 and stats["metrics"]["rel_diff"] is None
    assert stats["stats"]["checksum_match"] is True and stats["details"] is None
    assert skipped["status"] == "skip" and skipped["metrics"]["rel_diff"] is None and not skipped["stats_only"]


def test_table_html_and_junit_show_the_trace_and_the_fingerprints():
    report = hand_built_report()
    table = _table(report)
    assert "collectives since the last passing tensor" in table and DIFFERENCE in table
    assert "pass (stats)" in table
    page = render_html(report)
    assert "python -m examples.moe_engine --ep 2" in page and "extra in the target" in page
    suite = ET.fromstring(render_junit(report).split("\n", 1)[1])
    names = [case.get("name") for case in suite.iter("testcase")]
    assert "router_logits[layer=1] (stats only)" in names
    assert [case.find("failure").get("type") for case in suite.iter("testcase") if case.find("failure") is not None] == ["source"]
