"""``dumpcmp calibrate`` (comparator/judge/calibrate.py): thresholds from the noise between runs that should agree.

The example engine runs with ``--nondeterministic`` (split-K expert down-projections
summed in a run-seeded order), so two healthy runs differ at rounding level. Thresholds
calibrated on two of them must pass a third healthy run and still fail each seed bug at
the tensor its seed names. Seven engine runs in all, two at a time, shared by the module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from comparator import compare
from comparator.judge.calibrate import NOISE_FLOORS, calibrate
from comparator.cli import app
from comparator.errors import CalibrateError, ThresholdsError
from comparator.report.json import report_to_json
from comparator.judge.thresholds import load_thresholds
from tests.helpers.example_runs import dump_examples


RUNS = {
    "healthy_a": "",
    "healthy_b": "",
    "healthy_c": "",
    "seed2": "--ep 2 --bug double_reduce",
    "seed3": "--tp 2 --bug shared_expert_double_reduce",
    "seed4": "--tp 2 --dense-tp --bug dense_tp_missing_reduce",
    "two_layers": "--layers 2",
}
# (name, layer) of each seed's first divergence (SEEDS.md; tests/examples/test_seeds_end_to_end.py).
SEED_TENSORS = {"seed2": ("moe_output", 1), "seed3": ("shared_expert_output", 1), "seed4": ("dense_mlp_output", 0)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return dump_examples(tmp_path_factory.mktemp("calibrate"), {name: f"--nondeterministic {args}" for name, args in RUNS.items()})


@pytest.fixture(scope="module")
def thresholds(runs, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("thresholds") / "thresholds.yaml"
    calibrate([runs["healthy_a"], runs["healthy_b"]]).write(path)
    return path


def failing(report) -> list[tuple]:
    return [(r.name, r.step, r.tags, r.reason) for r in report.results if r.status != "pass"]


# ---------------------------------------------------------------- the engine's nondeterminism
@pytest.mark.slow
def test_healthy_nondeterministic_runs_differ_at_rounding_level(runs):
    report = compare(runs["healthy_a"], runs["healthy_b"])
    assert report.exit_code == 0, failing(report)
    moe = [r for r in report.results if r.name == "moe_output"]
    assert all(0 < r.metrics.rel_diff < 1e-12 for r in moe)  # differ, but only by rounding
    dense = [r for r in report.results if r.name == "dense_mlp_output"]
    assert all(r.metrics.rel_diff == 0 for r in dense)  # upstream of every nondeterministic op


# ---------------------------------------------------------------- calibrate
@pytest.mark.slow
def test_calibrated_rules_per_name_with_margin_and_floor(runs, thresholds):
    data = yaml.safe_load(thresholds.read_text())
    rules = {rule["name"]: rule for rule in data["rules"]}
    assert "^moe_output$" in rules and "^logits$" in rules
    assert "^topk_ids$" not in rules and "^input_ids$" not in rules  # integers keep their exact defaults
    moe = rules["^moe_output$"]
    assert moe["rel_diff"] == pytest.approx(10 * moe["calibrated"]["rel_diff"], rel=1e-2)
    low, high = moe["norm_ratio"]
    assert low < 1 < high and high - 1 == pytest.approx(10 * moe["calibrated"]["norm_ratio"], rel=1e-2)
    assert moe["calibrated"]["rel_diff"] > NOISE_FLOORS["float32"]["rel_diff"]  # measured, above the floor
    # Exact-zero noise (layer 0 is upstream of the nondeterministic op) gets the float32 floor, not 0.
    dense = rules["^dense_mlp_output$"]
    assert dense["calibrated"]["rel_diff"] == pytest.approx(NOISE_FLOORS["float32"]["rel_diff"], rel=1e-2)
    assert dense["rel_diff"] > 0
    # Far tighter than the float32 default, far looser than rounding-level noise.
    assert all(rule["rel_diff"] < 1e-6 for rule in rules.values())
    assert load_thresholds(thresholds).rules[0].calibrated  # the compare side reads it back


@pytest.mark.slow
def test_third_healthy_run_passes_with_floor_ratios(runs, thresholds):
    report = compare(runs["healthy_a"], runs["healthy_c"], thresholds=thresholds)
    assert report.exit_code == 0, failing(report)
    moe = [r for r in report.results if r.name == "moe_output"]
    assert all(r.floor_ratio is not None and 0 < r.floor_ratio <= 10 for r in moe)
    assert all(r.floor_ratio is None for r in report.results if r.name == "topk_ids")
    data = report_to_json(report)
    result = next(r for r in data["results"] if r["name"] == "moe_output")
    assert result["floor_ratio"] == pytest.approx(moe[0].floor_ratio)
    assert set(result["judgement"]["calibrated"]) == {"rel_diff", "norm_ratio"}


@pytest.mark.slow
@pytest.mark.parametrize("seed", sorted(SEED_TENSORS))
def test_each_seed_bug_still_fails_where_its_seed_says(runs, thresholds, seed):
    report = compare(runs["healthy_a"], runs[seed], thresholds=thresholds)
    assert report.exit_code == 1
    first = report.first_divergence
    assert (first.name, first.tags.get("layer")) == SEED_TENSORS[seed], failing(report)
    assert report.results[first.index].floor_ratio > 1e6  # a bug is orders beyond the noise


@pytest.mark.slow
def test_runs_with_different_tensors_are_refused(runs):
    with pytest.raises(CalibrateError, match=r"differ in their tensors, so they are not runs that should agree: "
                                             r"layer_input\[layer=2\]@step0: only in baseline.* \(and 25 more\)"):
        calibrate([runs["healthy_a"], runs["two_layers"]])


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "why"), [
    ("seed2", r"moe_output\[layer=1\]@step0 .*: target = 2 x baseline with cosine 1: a duplicated reduction"),
    ("seed3", r"shared_expert_output\[layer=1\]@step0 .*: target = 2 x baseline with cosine 1: a duplicated reduction"),
    ("seed4", r"dense_mlp_output\[layer=0\]@step0 .*: (ranks disagree on a tensor declared replicated|rel_diff .* is far above)"),
])
def test_runs_that_disagree_like_a_bug_are_refused(runs, seed, why):
    with pytest.raises(CalibrateError, match=r"these runs disagree like a bug, not like noise: " + why):
        calibrate([runs["healthy_a"], runs[seed]])


@pytest.mark.slow
def test_accepting_a_bug_like_difference_never_writes_a_negative_bound(runs, tmp_path):
    calibration = calibrate([runs["healthy_a"], runs["seed2"]], accept_bug_like=True)
    assert any(s.label.startswith("moe_output[layer=1]@step0") for s in calibration.suspicions)
    for tensor in calibration.tensors:
        low, high = tensor.limits["norm_ratio"].low, tensor.limits["norm_ratio"].high
        assert 0 <= low < 1 < high, (tensor.name, low, high)
    result = CliRunner().invoke(app, ["calibrate", str(runs["healthy_a"]), str(runs["seed2"]), "-o", str(tmp_path / "t.yaml")])
    assert result.exit_code == 2 and not (tmp_path / "t.yaml").exists()


# ---------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_cli_writes_thresholds_that_compare_uses(runs, tmp_path):
    output = tmp_path / "thresholds.yaml"
    result = CliRunner().invoke(app, ["calibrate", str(runs["healthy_a"]), str(runs["healthy_b"]), str(runs["healthy_c"]),
                                      "-o", str(output), "--margin", "20"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("measured noise (largest over pairs, steps and layers):\n  ")
    assert "wrote 8 calibrated rules to" in result.output and "margin 20, 3 runs" in result.output
    assert output.read_text().startswith("# dumpcmp calibrate: 3 runs (3 pairs)")
    compared = CliRunner().invoke(app, ["compare", str(runs["healthy_a"]), str(runs["seed2"]), "-t", str(output),
                                        "--format", "json"])
    assert compared.exit_code == 1
    data = json.loads(compared.output)
    assert data["first_divergence"]["name"] == "moe_output"
    assert data["results"][data["first_divergence"]["index"]]["floor_ratio"] > 1e6


def test_cli_one_run_is_an_error(tmp_path):
    result = CliRunner().invoke(app, ["calibrate", str(tmp_path), "-o", str(tmp_path / "t.yaml")])
    assert result.exit_code == 2
    assert ("dumpcmp: error: calibrate needs two or more runs that should agree, got 1; dump the same baseline "
            "twice (e.g. with nondeterministic kernels) and pass both") in result.output


def test_margin_below_one_is_an_error(tmp_path):
    with pytest.raises(CalibrateError, match=r"--margin 0.5: must be a number >= 1"):
        calibrate([tmp_path, tmp_path], margin=0.5)


# ---------------------------------------------------------------- the calibrated: entry of a rule
def test_calibrated_entry_is_parsed_and_checked(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("rules:\n  - name: '^x$'\n    rel_diff: 1e-12\n    calibrated: {rel_diff: 1e-13, norm_ratio: 2e-7}\n")
    thresholds = load_thresholds(path)
    assert thresholds.calibration_for("x", {}, "float32", "float32") == {"rel_diff": 1e-13, "norm_ratio": 2e-7}
    assert thresholds.calibration_for("y", {}, "float32", "float32") == {}
    path.write_text("rules:\n  - name: '^x$'\n    calibrated: {cosine: 1e-3}\n")
    with pytest.raises(ThresholdsError, match=r"t.yaml:3: unknown calibrated metric 'cosine'; valid: rel_diff"):
        load_thresholds(path)
    path.write_text("rules:\n  - name: '^x$'\n    calibrated: {rel_diff: -1}\n")
    with pytest.raises(ThresholdsError, match=r"invalid calibrated noise for rel_diff: -1; expected a number >= 0"):
        load_thresholds(path)


def test_floor_ratio_is_the_largest_metric_over_noise():
    from comparator.judge.verdicts import floor_ratio

    values = {"rel_diff": 4e-13, "norm_ratio": 1 - 3e-7}
    assert floor_ratio(values, {"rel_diff": 1e-13, "norm_ratio": 1e-7}) == pytest.approx(4.0)
    assert floor_ratio(values, {}) is None
    assert floor_ratio({"rel_diff": 0.0}, {"rel_diff": 0.0}) == 0.0
    assert math.isinf(floor_ratio({"rel_diff": 1e-9}, {"rel_diff": 0.0}))
