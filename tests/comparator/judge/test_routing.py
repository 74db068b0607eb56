"""comparator/judge/routing.py on hand-made routing: flips, margins, benign vs suspicious, masking."""

from __future__ import annotations

import math

import torch

from comparator.judge.routing import UPSTREAM_HINT, keep_agreeing_tokens, measure_routing, topk_verdict

# 4 tokens, 4 experts, top-2. Token 2's 2nd and 3rd logits are nearly tied (margin 0.01).
LOGITS = torch.tensor([
    [3.0, 2.0, 0.0, -1.0],
    [0.0, 3.0, 2.0, -1.0],
    [2.0, 1.00, 0.99, -1.0],
    [-1.0, 0.0, 2.0, 3.0],
])
IDS = LOGITS.topk(2, dim=-1).indices


def test_identical_routing_has_no_flips():
    check = measure_routing(IDS, IDS.clone(), LOGITS, LOGITS.clone(), logits_pass=True, margin_factor=2.0)
    assert check.flips == () and check.tokens == 4 and check.top_k == 2
    assert topk_verdict(check) == (True, None, None)


def test_order_within_the_top_k_is_not_a_flip():
    check = measure_routing(IDS, IDS.flip(-1), LOGITS, LOGITS, logits_pass=True, margin_factor=2.0)
    assert check.flips == ()


def test_near_tie_flip_within_the_logits_error_is_benign():
    target_logits = LOGITS.clone()
    target_logits[2, 1:3] = torch.tensor([0.995, 0.996])  # a 0.005 error swaps experts 1 and 2
    target_ids = target_logits.topk(2, dim=-1).indices
    check = measure_routing(IDS, target_ids, LOGITS, target_logits, logits_pass=True, margin_factor=2.0)
    (flip,) = check.flips
    assert flip.benign and flip.token == 2
    assert flip.baseline_experts == (0, 1) and flip.target_experts == (0, 2)
    assert math.isclose(flip.margin, 0.01, rel_tol=1e-6)
    assert math.isclose(check.tolerance, 2 * 0.006, rel_tol=1e-5)  # factor x the largest per-token error
    assert topk_verdict(check)[0]
    json = check.to_json()
    assert json["benign_flips"][0]["token"] == 2 and json["suspicious_flips"] == []


def test_flip_with_a_clear_margin_is_suspicious():
    target_ids = IDS.clone()
    target_ids[0] = torch.tensor([0, 3])  # margin 2.0, logits identical: nothing explains it
    check = measure_routing(IDS, target_ids, LOGITS, LOGITS, logits_pass=True, margin_factor=2.0)
    (flip,) = check.suspicious
    assert flip.margin == 2.0 and not check.benign
    passed, reason, hint = topk_verdict(check)
    assert not passed and hint == UPSTREAM_HINT and "1 of 4 tokens chose other experts" in reason


def test_failing_router_logits_explain_no_flip():
    target_logits = LOGITS.clone()
    target_logits[2, 1:3] = torch.tensor([0.995, 0.996])
    target_ids = target_logits.topk(2, dim=-1).indices
    check = measure_routing(IDS, target_ids, LOGITS, target_logits, logits_pass=False, margin_factor=2.0)
    assert len(check.suspicious) == 1 and check.tolerance == 0.0
    assert "router logits fail their thresholds" in topk_verdict(check)[1]


def test_without_router_logits_every_flip_is_suspicious():
    target_ids = IDS.clone()
    target_ids[2] = torch.tensor([0, 2])
    check = measure_routing(IDS, target_ids, None, None, logits_pass=None, margin_factor=2.0)
    assert len(check.suspicious) == 1 and math.isnan(check.suspicious[0].margin)
    assert check.problem is not None


def test_moe_outputs_are_judged_on_agreeing_tokens():
    target_logits = LOGITS.clone()
    target_logits[2, 1:3] = torch.tensor([0.995, 0.996])
    check = measure_routing(IDS, target_logits.topk(2, dim=-1).indices, LOGITS, target_logits, logits_pass=True,
                            margin_factor=2.0)
    baseline = torch.arange(12.0).reshape(4, 3)
    target = baseline.clone()
    target[2] += 100.0  # the flipped token's output differs completely
    kept_b, kept_t, note = keep_agreeing_tokens(check, baseline, target, token_dim=0)
    assert torch.equal(kept_b, kept_t) and kept_b.shape == (3, 3)
    assert "judged on the 3 of 4 tokens" in note and "token 2 margin 0.01" in note
    # No token dim, or a suspicious flip: nothing is masked.
    assert keep_agreeing_tokens(check, baseline, target, token_dim=None)[2] is None


def test_failures_after_a_benign_flip_get_a_hint_naming_it():
    from comparator.judge.metrics import identical_metrics
    from comparator.judge.routing import annotate_downstream
    from comparator.results import NotMeasured, TensorMeasurement, TensorResult

    target_logits = LOGITS.clone()
    target_logits[2, 1:3] = torch.tensor([0.995, 0.996])
    check = measure_routing(IDS, target_logits.topk(2, dim=-1).indices, LOGITS, target_logits, logits_pass=True,
                            margin_factor=2.0)
    mismatch = NotMeasured(why="shape_mismatch")
    same = TensorMeasurement(metrics=identical_metrics(numel=8, norm=1.0, shape=(4, 2), token_dim=0, nan=0, inf=0))
    before = TensorResult(name="attn_output", step=0, tags={"layer": 1}, status="fail", reason="x", measurement=mismatch)
    topk = TensorResult(name="topk_ids", step=0, tags={"layer": 1}, status="pass", routing=check, measurement=same)
    after = TensorResult(name="layer_input", step=0, tags={"layer": 2}, status="fail", reason="x", measurement=mismatch)
    hinted = TensorResult(name="logits", step=0, tags={}, status="fail", reason="x", hint="target = 2 x baseline",
                          measurement=mismatch)
    out = annotate_downstream([before, topk, after, hinted])
    assert out[0].hint is None and out[3].hint == "target = 2 x baseline"
    assert out[2].hint.startswith("downstream of 1 benign routing flip(s) at topk_ids[layer=1]@step0 (token 2, margin 0.01)")
