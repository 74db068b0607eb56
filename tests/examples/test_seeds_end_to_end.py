"""The seed bugs end to end: dumped by ``dumpcmp run --patch``, found by ``comparator.compare``.

Every run goes through ``dumpcmp run --patch patches/presets/example/moe_engine.yaml --
python -m examples.moe_engine ...`` (the engine has no dump calls), two at a time; one
1-process baseline serves every target. Healthy targets pass; each ``--bug``'s first
divergence is the tensor its seed names (SEEDS.md), at the first layer of the right
block (layer 0 is dense, layers 1-2 are MoE), with the hint that explains it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from comparator import compare
from tests.helpers.example_runs import dump_examples

pytestmark = pytest.mark.slow


HEALTHY = {
    "tp2": "--tp 2",
    "ep2": "--ep 2",
    "tp2_ep2": "--tp 2 --ep 2",
    "tp2_ep2_fusion": "--tp 2 --ep 2 --fusion",
    "dense_tp": "--tp 2 --dense-tp",
    "dp_attention": "--tp 2 --ep 2 --dp-attention 2 --dense-tp",
}
BUGS = {
    "seed1_ep2": "--ep 2 --fusion --bug ep_reduce_skipped_under_fusion",
    "seed1_tp2_ep2": "--tp 2 --ep 2 --fusion --bug ep_reduce_skipped_under_fusion",
    "seed2": "--ep 2 --bug double_reduce",
    "seed3": "--tp 2 --bug shared_expert_double_reduce",
    "seed4": "--tp 2 --dense-tp --bug dense_tp_missing_reduce",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return dump_examples(tmp_path_factory.mktemp("seeds"), {"baseline": "", **HEALTHY, **BUGS})


def failing(report) -> list[tuple]:
    return [(r.name, r.step, r.tags, r.reason, r.hint) for r in report.results if r.status != "pass"]


def result_for(report, name: str, layer: int, step: int = 0):
    (found,) = [r for r in report.results if r.name == name and r.tags.get("layer") == layer and r.step == step]
    return found


# ---------------------------------------------------------------- healthy targets
@pytest.mark.parametrize("target", ["tp2", "ep2", "tp2_ep2", "tp2_ep2_fusion", "dense_tp"])
def test_healthy_target_passes(runs, target):
    report = compare(runs["baseline"], runs[target])
    assert report.exit_code == 0 and report.first_divergence is None, failing(report)
    assert report.summary.passed == report.summary.total > 80  # every dump point, every step
    names = {r.name for r in report.results}
    assert {"moe_output", "routed_expert_output", "shared_expert_output", "dense_mlp_output", "logits"} <= names


def test_healthy_dp_attention_passes_with_concat_steps(runs):
    report = compare(runs["baseline"], runs["dp_attention"], aligner="concat_steps")
    assert report.exit_code == 0, failing(report)
    moe = result_for(report, "moe_output", 1)
    assert moe.alignment is not None and moe.alignment.changed_anything  # the padding rows were trimmed


# ---------------------------------------------------------------- seed bugs
def test_seed1_missing_ep_all_reduce_under_fusion(runs):
    report = compare(runs["baseline"], runs["seed1_ep2"])
    first = report.first_divergence
    assert (first.name, first.step, first.tags) == ("moe_output", 0, {"layer": 1})
    assert "ranks disagree on a tensor declared replicated" in first.hint
    assert "their sum matches the baseline" in first.hint
    # EP 2: ep and attn_tp are the same two ranks; the hint names both.
    assert first.hint.endswith("missing all-reduce over attn_tp (here the same ranks as ep)")
    # What comes before it (the routed and shared partials of that layer) passes.
    assert result_for(report, "shared_expert_output", 1)
    assert result_for(report, "routed_expert_output", 1)


def test_seed1_on_tp2_ep2_names_ep_alone(runs):
    # moe_tp is reduced (the fused path covers it), ep is not: only the sum over ep is the baseline.
    report = compare(runs["baseline"], runs["seed1_tp2_ep2"])
    first = report.first_divergence
    assert (first.name, first.tags) == ("moe_output", {"layer": 1})
    assert first.hint.endswith("their sum matches the baseline (rel_diff " + first.hint.split("(rel_diff ")[-1])
    assert first.hint.endswith("missing all-reduce over ep")
    moe = report.results[first.index]
    assert moe.replica_disagreement["moe_tp"] == 0.0 and moe.replica_disagreement["ep"] > 0.5


def test_seed2_double_reduce_is_k_times_baseline_with_cosine_one(runs):
    report = compare(runs["baseline"], runs["seed2"])
    first = report.first_divergence
    assert (first.name, first.step, first.tags) == ("moe_output", 0, {"layer": 1})
    assert first.hint.startswith("target = 2 x baseline")
    assert "looks like a duplicated reduction over a group of size 2" in first.hint
    metrics = report.results[first.index].metrics
    assert metrics.cosine == pytest.approx(1.0, abs=1e-9)  # a cosine-only gate would pass it
    assert metrics.norm_ratio == pytest.approx(2.0, rel=1e-5)


def test_seed3_shared_expert_doubled_while_routed_output_matches(runs):
    report = compare(runs["baseline"], runs["seed3"])
    first = report.first_divergence
    assert (first.name, first.step, first.tags) == ("shared_expert_output", 0, {"layer": 1})
    assert first.hint.startswith("target = 2 x baseline")
    assert "duplicated reduction over a group of size 2" in first.hint
    assert result_for(report, "routed_expert_output", 1).status == "pass"


def test_seed4_dense_tp_missing_all_reduce(runs):
    report = compare(runs["baseline"], runs["seed4"])
    first = report.first_divergence
    assert (first.name, first.step, first.tags) == ("dense_mlp_output", 0, {"layer": 0})
    assert "their sum matches the baseline" in first.hint
    assert "missing all-reduce over attn_tp" in first.hint
    assert result_for(report, "attn_output", 0).status == "pass"


def test_seed5_dp_attention_with_the_default_aligner_passes(runs):
    report = compare(runs["baseline"], runs["dp_attention"])
    assert report.exit_code == 0, failing(report)
    assert report.aligner == "concat_steps" and report.aligner_reason.startswith(
        "auto: concat_steps, step by step: the same tokens at every step, laid out differently")


def test_seed5_dp_attention_without_an_aligner_hints_at_padding(runs):
    # num_tokens_per_dp_rank holds one count per DP rank: a different shape by design.
    report = compare(runs["baseline"], runs["dp_attention"], exclude="^num_tokens_per_dp_rank$", aligner="none")
    first = report.first_divergence
    # The attention side is each DP rank's own tokens (17 in all, as the baseline); the
    # MoE block sees them gathered, each DP rank padded to 9 rows.
    assert (first.name, first.step, first.tags) == ("router_logits", 0, {"layer": 1})
    assert first.reason == "shape mismatch: baseline [17, 8] vs target [18, 8]"
    assert first.hint.endswith("looks like padding, try --aligner concat_steps")
