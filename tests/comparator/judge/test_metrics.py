from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import comparator.judge.metrics as metrics_module
from comparator.judge.metrics import compute_metrics

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=finite), arrays(np.float32, st.integers(1, 300), elements=finite))
def test_metrics_match_a_float64_reference_and_rel_diff_is_symmetric(a, b):
    n = min(len(a), len(b))
    x, y = torch.from_numpy(a[:n].copy()), torch.from_numpy(b[:n].copy())
    m = compute_metrics(x, y)
    xd, yd = a[:n].astype(np.float64), b[:n].astype(np.float64)
    denominator = (xd @ xd) + (yd @ yd)
    expected = 1 - 2 * (xd @ yd) / denominator if denominator else 0.0
    assert m.rel_diff == pytest.approx(max(0.0, expected), abs=1e-12)
    assert compute_metrics(y, x).rel_diff == pytest.approx(m.rel_diff, abs=1e-12)
    assert m.max_abs == pytest.approx(np.abs(yd - xd).max())
    assert abs(yd[m.max_abs_index[0]] - xd[m.max_abs_index[0]]) == pytest.approx(m.max_abs)
    assert m.mean_abs == pytest.approx(np.abs(yd - xd).mean())


def test_chunking_does_not_change_the_result(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(37, 11, generator=generator)
    y = x + 1e-2 * torch.randn(37, 11, generator=generator)
    whole = compute_metrics(x, y, token_dim=0)
    monkeypatch.setattr(metrics_module, "CHUNK_ELEMENTS", 16)
    chunked = compute_metrics(x, y, token_dim=0)
    for field in ("rel_diff", "rel_l2", "cosine", "max_abs", "mean_abs", "norm_ratio"):
        assert getattr(chunked, field) == pytest.approx(getattr(whole, field), rel=1e-12)
    assert chunked.max_abs_index == whole.max_abs_index
    assert chunked.per_token_rel_l2 == pytest.approx(whole.per_token_rel_l2)


def test_scale_is_caught_where_cosine_is_not():
    x = torch.randn(64)
    m = compute_metrics(x, 2 * x)
    assert m.cosine == pytest.approx(1.0) and m.rel_diff == pytest.approx(0.2) and m.norm_ratio == pytest.approx(2.0)
    assert m.scale == pytest.approx(2.0) and m.scale_residual < 1e-6


def test_token_dim_error_and_index_in_the_original_layout():
    x = torch.zeros(3, 5, 4)
    y = x.clone()
    y[2, 3, 1] = 1.0  # token 3 along dim 1
    m = compute_metrics(x + 1, y + 1, token_dim=1)
    assert m.max_abs_index == (2, 3, 1)
    assert m.worst_token[0] == 3 and [v > 0 for v in m.per_token_rel_l2] == [False, False, False, True, False]


def test_nan_and_inf_are_counted_per_side():
    x = torch.ones(10)
    y = x.clone()
    y[2] = math.nan
    y[5] = math.inf
    m = compute_metrics(x, y)
    assert (m.nan_target, m.inf_target, m.nan_baseline, m.nonfinite_mismatch) == (1, 1, 0, 2)
    assert m.rel_diff == 0.0  # finite positions agree
    both = compute_metrics(y, y)
    assert both.nonfinite_mismatch == 0


def test_mixed_dtypes_and_integers():
    x = torch.randn(100)
    assert compute_metrics(x.bfloat16(), x).rel_diff < 1e-4
    assert compute_metrics(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5])).max_abs == 2
    assert compute_metrics(torch.zeros(3), torch.zeros(3)).rel_diff == 0 and compute_metrics(torch.zeros(3), torch.zeros(3)).norm_ratio == 1
