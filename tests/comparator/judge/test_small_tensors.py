"""Default limits widen for tensors of few elements; a rule's limits and big tensors do not."""

from __future__ import annotations

import pytest
import torch

from comparator.judge.metrics import compute_metrics
from comparator.judge.small_tensors import FULL_SIZE, size_factor
from comparator.judge.thresholds import load_thresholds
from comparator.judge.verdicts import judge
from comparator.results import TensorMeasurement

# Shaped like the router logits of one decode token with the bf16 noise of two runs
# batched differently (example engine, seed 7, layer 3, measured rel_diff 9.3e-4 and
# norm_ratio 0.974; that run is tested in tests/examples/test_routing_end_to_end.py).
BASELINE = torch.tensor([[-0.0574, 0.4121, -0.3516, 0.2891, 0.5117, -0.4473, 0.1602, -0.3984]])
TARGET = torch.tensor([[-0.0278, 0.4023, -0.3418, 0.2832, 0.4980, -0.4375, 0.1553, -0.3906]])


def _judged(baseline: torch.Tensor, target: torch.Tensor, thresholds=None):
    metrics = compute_metrics(baseline.to(torch.bfloat16), target.to(torch.bfloat16), token_dim=0)
    criteria = (thresholds or load_thresholds(None)).criteria_for("tensor", "router_logits", {"layer": 3},
                                                                   "bfloat16", "bfloat16")
    return metrics, judge(TensorMeasurement(metrics=metrics), criteria)


def test_one_token_of_bf16_noise_passes_with_the_widened_defaults():
    metrics, judgement = _judged(BASELINE, TARGET)
    assert abs(metrics.norm_ratio - 1) > 0.02  # outside the unwidened band
    assert judgement.failed == ()
    assert judgement.rule == "default (bfloat16), widened x2.83 for 8 elements"
    assert judgement.limits["norm_ratio"].high == pytest.approx(1 + 0.02 * 8 ** 0.5)


def test_a_doubled_small_tensor_still_fails():
    _, judgement = _judged(BASELINE, 2 * BASELINE)
    assert set(judgement.failed) == {"rel_diff", "norm_ratio"}


def test_a_rules_own_limit_is_taken_as_written(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("rules:\n  - name: router_logits\n    norm_ratio: 0.02\n")
    _, judgement = _judged(BASELINE, TARGET, load_thresholds(path))
    assert judgement.failed == ("norm_ratio",)
    assert judgement.limits["norm_ratio"].high == 1.02
    # rel_diff still comes from the defaults, so it widens.
    assert judgement.limits["rel_diff"].high == pytest.approx(1e-3 * 8 ** 0.5)


def test_big_tensors_are_judged_by_the_plain_defaults():
    assert size_factor(FULL_SIZE) == size_factor(10_000) == 1.0 and size_factor(0) == 1.0
    torch.manual_seed(0)
    baseline = torch.randn(4, 64)
    _, judgement = _judged(baseline, baseline * 1.03)
    assert judgement.rule == "default (bfloat16)"
    assert judgement.failed == ("norm_ratio",)  # rel_diff of a 3% rescale is 4.4e-4
