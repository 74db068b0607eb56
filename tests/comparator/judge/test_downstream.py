"""Which rows a benign routing flip reaches downstream (comparator/judge/downstream.py)."""

from __future__ import annotations

from comparator.judge.downstream import FlipOrigin, downstream_mask, reaches, requests_from_positions

# A flip at layer 1, step 0, of request 7's token at position 2.
FLIP = FlipOrigin(label="topk_ids[layer=1]@step0", order=(10, 0, 0), step=0, layer=1, request=7, position=2,
                  margin=0.0)


def test_the_flipped_token_its_later_tokens_and_steps():
    # Same step, same layer (after the MoE output): the token itself only.
    assert reaches(FLIP, (0, 7, 2), 1) and not reaches(FLIP, (0, 7, 3), 1)
    # Same step, later layers: the request's tokens from the flipped one on (causal attention).
    assert reaches(FLIP, (0, 7, 3), 2) and reaches(FLIP, (0, 7, 2), None)
    assert not reaches(FLIP, (0, 7, 1), 2)
    # Later steps: every token of the request from the next layer on; never at the flip's layer or before.
    assert reaches(FLIP, (1, 7, 5), 2) and reaches(FLIP, (3, 7, 8), None)
    assert not reaches(FLIP, (1, 7, 5), 1) and not reaches(FLIP, (1, 7, 5), 0)
    # Other requests are untouched.
    assert not reaches(FLIP, (0, 8, 3), 2) and not reaches(FLIP, (1, 8, 9), None)


def test_mask_of_a_later_layer_and_a_tensor_before_the_flip():
    keys = [(0, 6, 0), (0, 6, 1), (0, 7, 0), (0, 7, 1), (0, 7, 2), (0, 7, 3)]
    mask = downstream_mask([FLIP], keys, layer=2, order=(12, 0, 0))
    assert mask is not None and mask.rows == (4, 5) and mask.kept == 4 and mask.origins == (FLIP,)
    assert "judged on the 4 of 6 tokens" in mask.note() and "topk_ids[layer=1]@step0" in mask.note()
    assert mask.to_json()["flips"][0]["request"] == 7
    assert downstream_mask([FLIP], keys, layer=0, order=(5, 0, 0)) is None  # before the flip


def test_requests_from_positions_follow_each_request_across_steps():
    keys = requests_from_positions([(0, [0, 1, 2, 0, 1]), (1, [3, 2]), (2, [4, 3])])
    assert keys[0] == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1)]
    assert keys[1] == [(1, 0, 3), (1, 1, 2)]
    assert keys[2] == [(2, 0, 4), (2, 1, 3)]
