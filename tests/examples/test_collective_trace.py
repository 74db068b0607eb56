"""The collective trace on the example engine: the report shows the doubled and the
missing all-reduce between the last passing and the first failing tensor.

Four runs through ``dumpcmp run --patch example/moe_engine``: a healthy and a buggy
target for seed 2 (double_reduce) and seed 1 (EP reduce skipped under fusion), each
compared with a healthy run of the same layout.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from comparator import compare
from comparator.report.html import render_html
from comparator.report.json import report_to_json
from comparator.report.table import render_table
from dumper.collectives import read_collectives
from tests.helpers.example_runs import dump_example, dump_examples

pytestmark = pytest.mark.slow

RUNS = {
    "ep2": "--ep 2",
    "double_reduce": "--ep 2 --bug double_reduce",
    "ep2_fusion": "--ep 2 --fusion",
    "skipped_reduce": "--ep 2 --fusion --bug ep_reduce_skipped_under_fusion",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return dump_examples(tmp_path_factory.mktemp("collectives"), RUNS)


def table(report) -> str:
    out = io.StringIO()
    render_table(report, Console(file=out, width=200, force_terminal=False))
    return out.getvalue()


def test_every_rank_records_its_collectives(runs):
    for rank in (0, 1):
        records = read_collectives(str(runs["ep2"] / f"rank-0000{rank}"))
        assert records and {r["op"] for r in records} == {"all_reduce", "all_gather"}  # + gather_results
        ep = [r for r in records if r["group"]["axis"] == "ep"]
        assert ep and all(r["group"]["ranks"] == [0, 1] and r["shape"][1] == 64 for r in ep)
        assert all(r["after_seq"] >= 0 for r in records)
        assert any("MoEBlock.reduce_output" in frame for r in ep for frame in r["caller"])


def test_double_reduce_shows_the_extra_all_reduce(runs):
    report = compare(runs["ep2"], runs["double_reduce"])
    assert report.first_divergence.name == "moe_output"
    trace = report.collectives
    for rank in trace.target:
        assert [(c.op, c.axis, c.count) for c in rank.calls] == [("all_reduce", "ep", 1), ("all_reduce", "world", 1)]
        assert rank.after.startswith("shared_expert_output")
    for rank in trace.baseline:
        assert [(c.op, c.axis, c.count) for c in rank.calls] == [("all_reduce", "ep", 1)]
    assert len(trace.differences) == 2
    assert trace.differences[0].startswith("target rank 0: all_reduce(world, [")
    assert "x1 here; baseline rank 0: x0 (extra in the target)" in trace.differences[0]
    assert "all_reduce(world, [" in table(report)
    collectives = report_to_json(report)["first_divergence"]["collectives"]
    assert collectives["differences"] == list(trace.differences)
    assert collectives["target"][0]["calls"][1]["axis"] == "world" and collectives["target"][0]["calls"][1]["count"] == 1


def test_skipped_reduce_shows_the_missing_all_reduce(runs):
    report = compare(runs["ep2_fusion"], runs["skipped_reduce"])
    assert report.first_divergence.name == "moe_output"
    trace = report.collectives
    assert all(rank.calls == () for rank in trace.target)
    assert all([(c.op, c.axis) for c in rank.calls] == [("all_reduce", "ep")] for rank in trace.baseline)
    assert "x0 here; baseline rank 1: x1 (missing in the target)" in trace.differences[1]
    assert "missing in the target" in table(report)
    assert "x0 here; baseline rank 1: x1 (missing in the target)" in render_html(report)


def test_a_one_rank_baseline_has_nothing_to_compare_counts_with(runs, tmp_path):
    single = dump_example(tmp_path, "single", "")
    report = compare(single, runs["double_reduce"])
    trace = report.collectives
    assert trace.traced == {"baseline": True, "target": True}
    assert trace.differences == () and all(rank.calls == () for rank in trace.baseline)
    assert [c.axis for c in trace.target[0].calls] == ["ep", "world"]
