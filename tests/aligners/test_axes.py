from __future__ import annotations

import pytest
import torch

from aligners.axes import align_axes, dim_index, dim_names
from aligners.errors import AxisAlignmentError
from dumper.dims import parse_dims


def test_dim_names_ignore_shards_and_comments():
    assert dim_names(parse_dims("t (h[tp] d) # ep:replicated")) == (("t",), ("h", "d"))
    assert dim_names(parse_dims("t h[ep:partial] # dp:=attn_dp")) == (("t",), ("h",))
    assert dim_index(parse_dims("r[attn_dp] v # x:replicated"), "r") == 0
    assert dim_index(parse_dims("t (r v)"), "r") is None
    # SGLang's fused spellings name the same parts as ours, so the two align by name.
    assert dim_names(parse_dims("t (h*d)")) == dim_names(parse_dims("t h*d")) == dim_names(parse_dims("t (h d)"))


def test_grouped_meets_split():
    split = torch.randn(5, 3, 4)
    grouped = split.reshape(5, 12)
    aligned, done = align_axes(split, grouped, baseline_dims=parse_dims("t h d"), target_dims=parse_dims("t (h d)"))
    assert torch.equal(aligned, split) and done == "'t (h d)' -> 't h d'"
    aligned, done = align_axes(grouped, split, baseline_dims=parse_dims("t (h d)"), target_dims=parse_dims("t h d"))
    assert torch.equal(aligned, grouped)


def test_transposed_meets_original():
    original = torch.randn(5, 8)
    aligned, done = align_axes(original, original.t(), baseline_dims=parse_dims("t h"), target_dims=parse_dims("h t"))
    assert torch.equal(aligned, original) and done == "'h t' -> 't h'"


def test_grouped_in_another_order():
    atomic = torch.randn(2, 3, 4)  # t h d
    target = atomic.permute(0, 2, 1).reshape(2, 12)  # t (d h)
    aligned, done = align_axes(atomic, target, baseline_dims=parse_dims("t h d"), target_dims=parse_dims("t (d h)"))
    assert torch.equal(aligned, atomic) and done == "'t (d h)' -> 't h d'"


def test_same_names_need_nothing():
    x = torch.randn(2, 3)
    assert align_axes(x, x, baseline_dims=parse_dims("t h[tp]"), target_dims=parse_dims("t h # tp:replicated")) == (x, None)
    assert align_axes(x, x, baseline_dims=None, target_dims=parse_dims("h t")) == (x, None)


@pytest.mark.parametrize(("baseline_dims", "target_dims", "shapes", "why"), [
    ("t h", "t e", ((2, 3), (2, 3)), "they name different dims (baseline only: h; target only: e)"),
    ("t (h d)", "t (d h)", ((2, 12), (2, 12)), "the sizes of h, d are unknown"),
    ("t h d", "t (h d)", ((2, 3, 4), (2, 13)), "the target's (h d) has 13 entries, not 3 x 4"),
    ("t h", "h t", ((2, 3), (4, 2)), "dim h has 3 entries in the baseline and 4 in the target"),
    ("t h", "h t", ((2, 3), (3, 2, 1)), "the target tensor has 3 dims [3, 2, 1], its dims 'h t' name 2"),
    ("* h", "h *", ((2, 3), (3, 2)), "unnamed"),
])
def test_irreconcilable_dims_name_both(baseline_dims, target_dims, shapes, why):
    with pytest.raises(AxisAlignmentError) as caught:
        align_axes(torch.zeros(shapes[0]), torch.zeros(shapes[1]), baseline_dims=parse_dims(baseline_dims),
                   target_dims=parse_dims(target_dims))
    message = str(caught.value)
    assert f"target's dims {target_dims!r}" in message and f"baseline's dims {baseline_dims!r}" in message
    assert why in message
