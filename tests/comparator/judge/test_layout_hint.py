"""The layout-change hint: the dims annotations of the two sides disagree (partial vs replicated) and the
values differ by that axis's group size. Real runs of the example engine; the target's moe_output is
re-annotated ep:partial (--override-dims), as a stale or changed annotation would say."""

from __future__ import annotations

import json

from comparator.judge.hints import layout_hint
from dumper.dims import parse_dims
from tests.helpers.example_runs import dumpcmp, example_run, example_runs_root
from tests.helpers.fingerprint_runs import fingerprint_runs

PARTIAL = "target:moe_output=t h # ep:partial attn_dp:replicated attn_tp:replicated moe_tp:replicated"


def _first(report: dict) -> dict:
    return report["first_divergence"]


def test_partial_against_replicated_by_the_group_size_says_the_annotations_disagree(tmp_path_factory):
    # NOTE: tensor mode only: stats alone never judge a partial sum (such tensors are skipped).
    root = example_runs_root(tmp_path_factory)
    proc = dumpcmp("compare", str(example_run(root, "base")), str(example_run(root, "ep2")),
                   "--override-dims", PARTIAL, "--format", "json")
    assert proc.returncode == 1, proc.stderr
    first = _first(json.loads(proc.stdout))
    assert first["name"] == "moe_output"
    assert first["hint"].startswith("the dims annotations disagree on ep: the baseline's say replicated")
    assert "the target's partial" in first["hint"] and "target = 2 x baseline, the ep group size" in first["hint"]
    assert "not a doubled reduction" in first["hint"]


def test_a_real_doubled_reduction_keeps_its_own_hint(tmp_path_factory):
    runs = fingerprint_runs(tmp_path_factory)
    proc = dumpcmp("compare", str(runs["base"]), str(runs["bug"]), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    hint = _first(json.loads(proc.stdout))["hint"]
    assert "duplicated reduction over a group of size 2" in hint and "annotations disagree" not in hint


def test_layout_hint_needs_both_a_disagreement_and_the_group_size():
    replicated, partial = parse_dims("t h # tp:replicated"), parse_dims("t h[tp:partial]")
    assert layout_hint(replicated, partial, 8.0, {"tp": 8}) is not None
    assert "target = 1/8 x baseline" in layout_hint(partial, replicated, 0.125, {"tp": 8})
    assert layout_hint(replicated, replicated, 8.0, {"tp": 8}) is None  # same annotation: a real reduction bug
    assert layout_hint(replicated, partial, 3.0, {"tp": 8}) is None  # not the group size
    assert layout_hint(replicated, partial, 8.0, {"tp": 1}) is None
