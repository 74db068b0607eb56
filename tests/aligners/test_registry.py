from __future__ import annotations

import pytest
import torch

from aligners import AlignContext, AlignerError, StepPair, aligner_names, get_aligner


def test_registry_names_and_errors():
    assert aligner_names() == ["none", "concat_steps", "by_request"]
    with pytest.raises(AlignerError, match="valid aligners: none, concat_steps, by_request"):
        get_aligner("bogus")
    with pytest.raises(AlignerError, match="not implemented yet"):
        get_aligner("by_request")


def test_none_aligner_pairs_step_by_step():
    aligner = get_aligner("none")
    context = AlignContext(name="x", tags={}, baseline_token_dim=0, target_token_dim=0)
    units = aligner.plan([StepPair(baseline_step=2, target_step=0), StepPair(baseline_step=None, target_step=1)], context)
    assert [(u.baseline_steps, u.target_steps, u.step) for u in units] == [((2,), (0,), 0), ((), (1,), 1)]
    a, b = torch.ones(2), torch.zeros(2)
    assert aligner.align(units[0], [a], [b], context) == (a, b)
