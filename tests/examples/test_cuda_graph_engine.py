"""The example engine decoding from CUDA graphs, dumped through the example preset, on a GPU.

Skipped without a GPU (CI has none; the static decode path and the graph-only bug's
logic are tested on the CPU in tests/examples/test_static_decode.py); run on a GPU
machine and recorded in docs/gpu.md.

* ``--cuda-graph`` with 3 requests (padded to the captured size 4) against eager: the
  records replayed from the graph are trimmed to the 3 real rows and compare as passing.
* ``--cuda-graph`` with 4 requests (a captured size: no padding) against
  ``--static-decode`` (the same kernels, run eagerly): every record is bit for bit equal.
* ``--bug graph_padding_counts``: the first divergence is the routed experts' output
  of the first MoE layer at the first decode step (the prefill is eager and clean).
* ``dumpcmp run --verify-observer``: dumping does not change a graph-mode run.
"""

from __future__ import annotations

import json
import shlex
import sys

import pytest
import torch

from comparator import compare
from dumper.reader import open_run
from tests.helpers.example_runs import dump_examples, dumpcmp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")

THREE = "--device cuda --prompt-lens 5,3,7 --steps 3"
FOUR = "--device cuda --steps 3"
RUNS = {
    "eager3": THREE,
    "graph3": f"{THREE} --cuda-graph",
    "bug3": f"{THREE} --cuda-graph --bug graph_padding_counts",
    "static4": f"{FOUR} --static-decode",
    "graph4": f"{FOUR} --cuda-graph",
    "eager4_bf16": f"{FOUR} --dtype bfloat16",
    "graph4_bf16": f"{FOUR} --dtype bfloat16 --cuda-graph",
}
DECODE_SITES = {"layer_input", "attn_output", "dense_mlp_output", "router_logits", "topk_ids",
                "routed_expert_output", "shared_expert_output", "moe_output"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return dump_examples(tmp_path_factory.mktemp("cuda_graph_engine"), RUNS)


def _failing(report) -> list[tuple]:
    return [(r.name, r.step, r.tags, r.reason) for r in report.results if r.status != "pass"]


def _records(run_dir):
    with open_run(run_dir) as run:
        return list(run.records)


def test_graph_mode_compares_as_passing_against_eager_with_padding_trimmed(runs):
    report = compare(runs["eager3"], runs["graph3"])
    assert report.exit_code == 0 and report.first_divergence is None, _failing(report)
    assert report.summary.passed == report.summary.total
    records = _records(runs["graph3"])
    decode = [r for r in records if r.step >= 1 and r.name in DECODE_SITES]
    assert {r.name for r in decode} == DECODE_SITES
    assert all(r.shape[0] == 3 for r in decode)  # the graph's 4th (padding) row is not in the dump
    assert len(decode) == len([r for r in _records(runs["eager3"]) if r.step >= 1 and r.name in DECODE_SITES])
    (rank_dir,) = [p for p in runs["graph3"].iterdir() if p.name.startswith("rank-")]
    coverage = json.loads((rank_dir / "rank.json").read_text())["graphs"]
    # Captured sizes 1, 2, 4, 8; replayed 3 times (the decode steps) from the size-4 graph.
    assert coverage["graphs_captured"] == 4 and coverage["replays"] == 3 and coverage["lost_sites"] == []
    per_step = {name: sum(1 for r in decode if r.name == name and r.step == 1) for name in DECODE_SITES}
    for name in DECODE_SITES:
        assert coverage["sites"][name]["emitted"] == 3 * per_step[name], name


def test_graph_replays_equal_the_same_kernels_run_eagerly_bit_for_bit(runs):
    graph, static = _records(runs["graph4"]), _records(runs["static4"])
    assert [(r.name, r.step, r.tags, r.shape) for r in graph] == [(r.name, r.step, r.tags, r.shape) for r in static]
    different = [(r.name, r.step, r.tags) for r, s in zip(graph, static) if r.checksum != s.checksum]
    assert different == []


def test_graph_mode_in_bfloat16_passes_within_thresholds(runs):
    report = compare(runs["eager4_bf16"], runs["graph4_bf16"])
    assert report.exit_code == 0, _failing(report)


def test_graph_only_bug_is_found_at_the_first_tensor_it_corrupts(runs):
    report = compare(runs["eager3"], runs["bug3"])
    first = report.first_divergence
    assert first is not None
    assert (first.name, first.step, first.tags) == ("routed_expert_output", 1, {"layer": 1})
    # What comes before it in that layer (router, chosen experts) still passes.
    for name in ("router_logits", "topk_ids"):
        (result,) = [r for r in report.results if r.name == name and r.step == 1 and r.tags == {"layer": 1}]
        assert result.status == "pass", (name, result.reason)
    assert first.hint.startswith("the target ran this step from a CUDA graph and the baseline eagerly")
    assert "padding rows of the captured batch" in first.hint


def test_dumping_does_not_change_a_graph_mode_run(tmp_path):
    run_dir = tmp_path / "observed"
    proc = dumpcmp("run", "--verify-observer", "--patch", "example/moe_engine", "--dir", str(run_dir), "--",
                   sys.executable, "-m", "examples.moe_engine", *shlex.split(f"{THREE} --cuda-graph"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads((run_dir / "run.json").read_text())["observer_check"]
    assert check["changed"] is False, check
