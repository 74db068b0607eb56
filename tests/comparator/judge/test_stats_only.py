"""Stats-only comparisons: pooling shard stats, their limits, and runs of the example engine.

The end-to-end cases dump the example engine through ``dumpcmp run`` with the example
preset, in tensor and in stats mode (tests/helpers/example_runs.py).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from comparator import compare
from comparator.errors import ThresholdsError, UnshardError
from comparator.judge.stats_only import compare_stats, pool_stats
from comparator.judge.thresholds import load_thresholds
from comparator.unshard import plan_unshard
from dumper.format import AxisInfo, IndexRecord
from dumper.stats import checksum, tensor_stats
from tests.helpers.example_runs import dumpcmp, example_run, example_runs_root


def _record(tensor: torch.Tensor, *, rank: int = 0, size: int = 1, dims: str | None = None) -> IndexRecord:
    return IndexRecord(
        seq=0, step=0, name="x", tags={}, rank=rank, world_size=size,
        parallel={"tp": AxisInfo(rank=rank, size=size)} if size > 1 else {}, dtype=str(tensor.dtype).removeprefix("torch."),
        shape=tuple(tensor.shape), dims=dims, stats=tensor_stats(tensor), checksum=checksum(tensor), file=None, key=None,
        nbytes=tensor.numel() * tensor.element_size(), time=0.0,
    )


@pytest.mark.parametrize("parts", [2, 3])
def test_pooled_shard_stats_equal_the_whole_tensors(parts):
    whole = torch.randn(7, 12 * parts, generator=torch.Generator().manual_seed(parts), dtype=torch.float64) + 0.3
    shards = whole.chunk(parts, dim=1)
    plan = plan_unshard("x", [_record(s, rank=r, size=parts, dims="t h[tp]") for r, s in enumerate(shards)])
    pooled = pool_stats(plan)
    expected = tensor_stats(whole)
    for field in ("mean", "abs_mean", "std", "l2", "min", "max"):
        assert math.isclose(getattr(pooled, field), getattr(expected, field), rel_tol=1e-12), field
    assert pooled.numel == whole.numel() and len(pooled.checksums) == parts


def test_replicas_that_disagree_are_measured_from_their_stats():
    value = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    records = [_record(value, rank=0, size=2, dims="t h # tp:replicated"),
               _record(value * 0.5, rank=1, size=2, dims="t h # tp:replicated")]
    baseline = plan_unshard("x", [_record(value * 1.0)])
    comparison = compare_stats([baseline], [plan_unshard("x", records)])
    assert comparison.replica_checksum_mismatch == ("tp",)
    assert comparison.replica_stats_diff == pytest.approx(0.5)
    assert comparison.norm_ratio == 1.0 and comparison.checksum_match is True


def test_partial_sums_need_the_same_layout_on_both_sides():
    value = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    partial = [_record(value / 2, rank=r, size=2, dims="t h[tp:partial]") for r in range(2)]
    with pytest.raises(UnshardError, match="partial sums over tp cannot be added up from stats"):
        compare_stats([plan_unshard("x", [_record(value)])], [plan_unshard("x", partial)])
    same = compare_stats([plan_unshard("x", partial)], [plan_unshard("x", partial)])
    assert same.checksum_match is True and same.norm_ratio == 1.0


def test_stats_thresholds_section(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("rules: [{name: 'logits', rel_diff: 1e-4}]\n"
                    "stats:\n  defaults: {float32: {norm_ratio: 0.1}}\n"
                    "  rules:\n    - {name: '^logits$', checksum: true}\n    - {name: 'router', mean_diff: 0.5}\n")
    thresholds = load_thresholds(path)
    logits = thresholds.criteria_for("stats", "logits", {}, "float32", "float32")
    assert logits.checksum and logits.limits["norm_ratio"].high == pytest.approx(1.1)
    assert logits.rule == "gate.yaml:5 (stats) over stats default (float32)"
    router = thresholds.criteria_for("stats", "router_logits", {}, "float32", "float32")
    assert not router.checksum and router.limits["mean_diff"].high == 0.5
    # The tensor rules are the top level's, read in the same pass.
    assert thresholds.criteria_for("tensor", "logits", {}, "float32", "float32").limits["rel_diff"].high == 1e-4


@pytest.mark.parametrize(("rule", "message"), [
    ("{name: x, rel_diff: 1}", ":3: unknown stats metric 'rel_diff'; valid metrics: norm_ratio, mean_diff, "
                               "abs_mean_diff, replica_stats_diff (and name, tags, dtype, checksum)"),
    ("{name: x, tags: layer}", ":3: tags must be a mapping, e.g. {layer: 0}, not 'layer'"),
    ("{name: x, norm_ratio: [2, 1]}", ":3: invalid limit for norm_ratio: [2, 1] (range [2.0, 1.0] is empty)"),
    ("{name: x, mean_diff: .nan}", ":3: invalid limit for mean_diff: nan (NaN is not a limit); expected a number"),
    ("{name: x, mean_diff: true}", ":3: invalid limit for mean_diff: True (mean_diff takes one number)"),
    ("{name: x, checksum: 1}", ":3: checksum must be true or false, not 1"),
    ("{name: '(x'}", ":3: name '(x' is not a valid regular expression"),
])
def test_stats_rules_are_checked_like_tensor_rules(tmp_path, rule, message):
    """One parser: a stats rule's errors name file:line, as a tensor rule's do (these used to pass or crash)."""
    path = tmp_path / "gate.yaml"
    path.write_text(f"stats:\n  rules:\n    - {rule}\n")
    with pytest.raises(ThresholdsError) as caught:
        load_thresholds(path)
    assert str(caught.value).startswith(f"{path}{message}")


def test_a_bad_stats_rule_is_one_line_at_the_cli(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("stats:\n  rules:\n    - {name: moe, tags: layer}\n")
    proc = dumpcmp("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--thresholds", str(path))
    assert proc.returncode == 2
    assert proc.stderr == f"dumpcmp: error: {path}:3: tags must be a mapping, e.g. {{layer: 0}}, not 'layer'\n"


# --------------------------------------------------------------- the example engine
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = example_runs_root(tmp_path_factory)
    return {name: example_run(root, name) for name in ("base", "ep2", "ep2_stats", "bug_stats")}


def test_stats_run_against_a_tensor_run_of_the_same_config_is_bitwise_identical(runs):
    report = compare(runs["ep2"], runs["ep2_stats"])
    assert report.exit_code == 0 and report.summary.passed == report.summary.total > 50
    assert all(r.stats_only and r.stats.checksum_match for r in report.results)


def test_stats_run_against_a_tensor_baseline_of_another_config(runs):
    report = compare(runs["base"], runs["ep2_stats"])
    skipped = [r for r in report.results if r.status == "skip"]
    assert {r.name for r in skipped} == {"routed_expert_output", "shared_expert_output"}
    assert all("partial sums over ep cannot be added up from stats" in r.reason for r in skipped)
    assert report.summary.failed == 0 and report.summary.passed > 50
    allowed = compare(runs["base"], runs["ep2_stats"], allow_skip="expert_output")
    assert allowed.exit_code == 0


def test_stats_only_finds_the_doubled_reduction(runs, tmp_path):
    report = compare(runs["base"], runs["bug_stats"])
    first = report.first_divergence
    assert (first.name, first.step, first.tags, first.origin) == ("moe_output", 0, {"layer": 1}, "source")
    assert first.hint.startswith("target = 2 x baseline (in norm and abs-mean, stats only: norm_ratio 2)")
    result = report.results[first.index]
    assert result.stats_only and result.stats.norm_ratio == pytest.approx(2.0, rel=1e-6)
    # Every report says which comparisons were stats-only.
    proc = dumpcmp("compare", str(runs["base"]), str(runs["bug_stats"]), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["summary"]["stats_only"] == data["summary"]["total"]
    moe = data["results"][first.index]
    assert moe["stats_only"] is True and moe["metrics"]["norm_ratio"] == pytest.approx(2.0)
    assert moe["metrics"]["rel_diff"] is None and moe["stats"]["checksum_match"] is False
    table = dumpcmp("compare", str(runs["base"]), str(runs["bug_stats"]))
    assert "fail (stats)" in table.stdout and "compared from index stats and checksums only" in table.stdout
    junit = dumpcmp("compare", str(runs["base"]), str(runs["bug_stats"]), "--format", "junit")
    assert 'name="moe_output[layer=1] (stats only)"' in junit.stdout
    html = dumpcmp("compare", str(runs["base"]), str(runs["bug_stats"]), "--format", "html", "--output",
                   str(tmp_path / "r.html"))
    assert html.returncode == 1
    page = (tmp_path / "r.html").read_text()
    assert "compared from stats only" in page and "|norm_ratio - 1|" in page


def test_stats_against_stats_and_a_checksum_gate(runs, tmp_path):
    report = compare(runs["ep2_stats"], runs["bug_stats"])
    assert report.first_divergence.name == "moe_output" and report.first_divergence.tags == {"layer": 1}
    gate = tmp_path / "gate.yaml"
    gate.write_text("stats:\n  rules:\n    - {name: '.', checksum: true}\n")
    strict = compare(runs["base"], runs["ep2_stats"], thresholds=gate, allow_skip="expert_output")
    failed = [r for r in strict.results if r.status == "fail"]
    assert failed and all("checksums" in r.reason for r in failed)
    assert compare(runs["ep2"], runs["ep2_stats"], thresholds=gate).exit_code == 0
