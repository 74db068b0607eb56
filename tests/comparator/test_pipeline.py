"""comparator.compare (comparator/pipeline.py) on runs written by real processes (single process, 2 and 4 gloo ranks)."""

from __future__ import annotations

import json
import shutil

import pytest

from comparator import compare
from comparator.errors import NothingUsableError, OptionError
from tests.helpers.procs import dump_run

from tests.comparator.conftest import MODEL


def by_label(report):
    return {r.label: r for r in report.results}


def test_identical_runs_pass(runs):
    report = compare(runs["tp1"], runs["tp1_again"])
    assert report.exit_code == 0 and bool(report)
    assert report.summary.total == 20 and report.summary.passed == 20
    assert report.first_divergence is None
    assert all(r.metrics.rel_diff == 0 for r in report.results)


def test_results_follow_execution_order(runs):
    report = compare(runs["tp1"], runs["tp1_again"])
    names = [(r.step, r.tags["layer"], r.name) for r in report.results[:5]]
    assert names == [(0, 0, "hidden_in"), (0, 0, "up_proj"), (0, 0, "down_partial"), (0, 0, "mlp_out"), (0, 0, "residual")]
    assert [r.step for r in report.results] == sorted(r.step for r in report.results)


def test_planted_scale_is_the_first_divergence_with_k2_hint(runs):
    report = compare(runs["tp1"], runs["tp1_scale2"])
    assert report.exit_code == 1
    first = report.first_divergence
    assert (first.name, first.step, first.tags) == ("mlp_out", 0, {"layer": 1})
    assert "target = 2 x baseline" in first.hint and "duplicated reduction over a group of size 2" in first.hint
    assert first.origin == "source"
    result = report.results[first.index]
    assert result.metrics.cosine == pytest.approx(1.0)  # cosine alone would have passed it
    assert result.metrics.scale == pytest.approx(2.0)
    assert result.judgement.required["rel_diff"].high == pytest.approx(0.2)


@pytest.mark.parametrize("target", ["tp2", "tp4"])
def test_tp_split_and_partial_sums_unshard_to_the_single_rank_baseline(runs, target):
    report = compare(runs["tp1"], runs[target])
    assert report.exit_code == 0, [(r.label, r.reason) for r in report.results if not r]
    size = 2 if target == "tp2" else 4
    results = by_label(report)
    split = results["up_proj[layer=0]@step0"]
    assert split.target.plan == f"concat dim 1 over tp({size})"
    assert split.target.ranks == tuple(range(size))
    assert split.target.shape == split.baseline.shape == (5, 16)
    partial = results["down_partial[layer=1]@step1"]
    assert partial.target.plan == f"sum over tp({size})"
    assert partial.metrics.rel_diff < 1e-12
    replicated = results["mlp_out[layer=0]@step0"]
    assert replicated.target.plan.startswith("pick one tp replica")
    assert replicated.replica_disagreement == {"tp": pytest.approx(0.0, abs=1e-12)}


def test_replicated_tensor_holding_partial_sums_gets_the_missing_allreduce_hint(runs):
    report = compare(runs["tp1"], runs["tp2_missing_allreduce"])
    assert report.exit_code == 1
    first = report.first_divergence
    assert (first.name, first.step, first.tags) == ("mlp_out", 0, {"layer": 0})
    assert "sum matches the baseline" in first.hint and "missing all-reduce over tp" in first.hint
    assert first.origin == "source"


def test_source_and_propagated_marking(runs):
    results = by_label(compare(runs["tp1"], runs["tp2_missing_allreduce"]))
    assert results["down_partial[layer=0]@step0"].status == "pass"
    assert results["mlp_out[layer=0]@step0"].origin == "source"
    residual = results["residual[layer=0]@step0"]
    assert residual.status == "fail" and residual.origin == "propagated"
    assert "mlp_out[layer=0]@step0" in residual.origin_detail
    # The first tensor of step 1 consumes the last one of step 0.
    assert results["hidden_in[layer=0]@step1"].origin == "propagated"


def test_first_divergence_after_an_unverified_input_is_marked_propagated(runs):
    # down_partial cannot be unsharded (its dims are overridden with one dim too many):
    # the mlp_out failure that consumes it may be inherited from it.
    report = compare(runs["tp1"], runs["tp1_scale2"], override_dims=["target:down_partial=t h x"])
    results = by_label(report)
    assert results["down_partial[layer=1]@step0"].status == "error"
    assert "name 3 dims" in results["down_partial[layer=1]@step0"].reason
    first = report.first_divergence
    assert first.name == "mlp_out" and first.origin == "propagated"
    assert "down_partial[layer=1]@step0" in first.origin_detail


def test_steps_names_and_exclude_filters(runs):
    report = compare(runs["tp1"], runs["tp2"], steps="1:", names="^(mlp_out|residual)$", exclude="residual")
    assert {(r.name, r.step) for r in report.results} == {("mlp_out", 1)}
    assert report.summary.total == 2  # two layers


def test_baseline_steps_pair_with_shifted_target_steps(runs):
    report = compare(runs["tp1"], runs["tp1_again"], steps="0:1", baseline_steps="1:2")
    # target step 0 is compared with baseline step 1: same names, other values
    assert report.summary.total == 10
    assert {r.step for r in report.results} == {0}
    assert report.results[0].baseline.steps == (1,)
    assert report.first_divergence is not None


def test_one_sided_tensors_are_skipped_with_the_reason(runs):
    report = compare(runs["tp1"], runs["tp1_again"], steps="0:1", baseline_steps="0:2")
    skipped = [r for r in report.results if r.status == "skip"]
    assert len(skipped) == 10
    assert all(r.reason.startswith("only in baseline") for r in skipped)
    assert report.exit_code == 1
    assert compare(runs["tp1"], runs["tp1_again"], steps="0:1", baseline_steps="0:2", allow_skip=".").exit_code == 0


def test_nothing_compared_is_exit_code_3(runs):
    report = compare(runs["tp1"], runs["tp2"], names="no_such_tensor")
    assert report.exit_code == 3 and report.summary.total == 0


def test_allow_fail_turns_failures_into_a_pass(runs):
    report = compare(runs["tp1"], runs["tp1_scale2"], allow_fail=".")
    assert report.exit_code == 0
    assert report.summary.allowed_failures == report.summary.failed > 0
    assert report.first_divergence.name == "mlp_out"


def test_thresholds_file_judges_and_reports_its_rule(runs, tmp_path):
    rules = tmp_path / "thresholds.yaml"
    rules.write_text("rules:\n  - name: '^mlp_out$'\n    tags: {layer: 1}\n    rel_diff: 0.25\n    norm_ratio: [0.5, 2.5]\n")
    report = compare(runs["tp1"], runs["tp1_scale2"], thresholds=rules)
    results = by_label(report)
    planted = results["mlp_out[layer=1]@step0"]
    assert planted.status == "pass"
    assert planted.judgement.rule == "thresholds.yaml:2 over default (float32)"
    assert report.first_divergence.name == "residual"
    # A rule's limits are taken as written; the defaults widen for these 40-element tensors.
    unruled = results["mlp_out[layer=0]@step0"].judgement
    assert unruled.rule == "default (float32), widened x1.26 for 40 elements"
    assert unruled.limits["rel_diff"].high == pytest.approx(1e-6 * (64 / 40) ** 0.5)
    assert planted.judgement.limits["rel_diff"].high == 0.25


def test_name_map_pairs_differently_named_tensors(runs, tmp_path):
    mapping = tmp_path / "names.yaml"
    mapping.write_text("names:\n  residual: mlp_out\n")
    report = compare(runs["tp1"], runs["tp1_again"], name_map=mapping, names="^(residual|mlp_out)$")
    paired = [r for r in report.results if r.label == "residual[layer=0]@step0" and r.target is not None]
    assert len(paired) == 1 and paired[0].baseline.name == "mlp_out" and paired[0].status == "fail"
    # The baseline's own residual has no partner left: reported once, as a skip.
    only_baseline = [r for r in report.results if r.name == "residual" and r.target is None]
    assert len(only_baseline) == 4 and all(r.reason.startswith("only in baseline") for r in only_baseline)


def test_parallel_jobs_give_the_same_report(runs):
    serial = compare(runs["tp1"], runs["tp2_missing_allreduce"])
    parallel = compare(runs["tp1"], runs["tp2_missing_allreduce"], jobs=2)
    assert [(r.label, r.status, r.hint) for r in parallel.results] == [(r.label, r.status, r.hint) for r in serial.results]
    assert [r.metrics.rel_diff for r in parallel.results] == [r.metrics.rel_diff for r in serial.results]


def test_missing_data_file_errors_that_tensor_and_compares_the_rest(runs, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["tp1_again"], damaged)
    index = damaged / "rank-00000" / "index.jsonl"
    lines = index.read_text().splitlines()
    record = json.loads(lines[3])
    record["file"] = "data-999999.safetensors"
    lines[3] = json.dumps(record)
    index.write_text("\n".join(lines) + "\n")
    report = compare(runs["tp1"], damaged)
    errors = [r for r in report.results if r.status == "error"]
    assert [(r.name, r.step) for r in errors] == [(record["name"], record["step"])]
    assert errors[0].load_error and "data-999999.safetensors: data file is missing" in errors[0].reason
    assert report.summary.passed == 19 and report.exit_code == 1


def test_truncated_data_files_leave_nothing_usable(runs, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["tp1_again"], damaged)
    for path in (damaged / "rank-00000").glob("*.safetensors"):
        path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(NothingUsableError, match="no tensor could be read .* corrupt safetensors file"):
        compare(runs["tp1"], damaged)


def test_stats_mode_runs_are_compared_from_stats(runs, tmp_path):
    # More in tests/comparator/judge/test_stats_only.py.
    stats = tmp_path / "stats"
    dump_run(stats, MODEL, DUMPCMP_MODE="stats")
    report = compare(runs["tp1"], stats)
    assert report.exit_code == 0
    assert all(r.stats_only and r.stats.checksum_match for r in report.results)


def test_unknown_aligner_lists_the_valid_ones(runs):
    with pytest.raises(OptionError, match="unknown aligner 'nope'; valid aligners: auto, none, concat_steps, by_request"):
        compare(runs["tp1"], runs["tp2"], aligner="nope")
    with pytest.raises(OptionError, match="invalid step range"):
        compare(runs["tp1"], runs["tp2"], steps="a:b")
