from __future__ import annotations

import pytest
import torch

from aligners import AlignContext, AlignerError, MetadataNames, StepPair, aligner_names, get_aligner
from dumper.dims import parse_dims


def test_registry_names_and_errors():
    assert aligner_names() == ["none", "concat_steps", "by_request"]
    with pytest.raises(AlignerError, match="valid aligners: none, concat_steps, by_request"):
        get_aligner("bogus")
    assert [get_aligner(name).name for name in aligner_names()] == aligner_names()


def test_none_aligner_pairs_step_by_step():
    aligner = get_aligner("none")
    context = AlignContext(name="x", tags={}, baseline_token_dim=0, target_token_dim=0)
    units = aligner.plan([StepPair(baseline_step=2, target_step=0), StepPair(baseline_step=None, target_step=1)], context)
    assert [(u.baseline_steps, u.target_steps, u.step) for u in units] == [((2,), (0,), 0), ((), (1,), 1)]
    a, b = torch.ones(2), torch.zeros(2)
    aligned = aligner.align(units[0], [a], [b], context)
    assert aligned.baseline is a and aligned.target is b
    assert tuple(aligned) == (a, b)
    assert not aligned.note.changed_anything
    assert aligned.note.describe() == "none: as dumped"


def test_none_aligner_aligns_axes():
    aligner = get_aligner("none")
    context = AlignContext(name="q", tags={}, baseline_token_dim=0, target_token_dim=1,
                           baseline_dims=parse_dims("t (h d)"), target_dims=parse_dims("h t d"))
    baseline = torch.arange(24.0).reshape(2, 12)
    target = baseline.reshape(2, 3, 4).permute(1, 0, 2).contiguous()
    (unit,) = aligner.plan([StepPair(baseline_step=0, target_step=0)], context)
    aligned = aligner.align(unit, [baseline], [target], context)
    assert torch.equal(aligned.target, baseline)
    assert aligned.token_dim == 0
    assert aligned.note.axes == "'h t d' -> 't (h d)'"
    assert aligned.note.to_json()["axes"] == "'h t d' -> 't (h d)'"


def test_metadata_names_parse():
    assert MetadataNames.parse(None) == MetadataNames()
    names = MetadataNames.parse("token_req_ids=rid_per_token, req_ids=rids")
    assert names.token_req_ids == "rid_per_token" and names.req_ids == ("rids",)
    with pytest.raises(AlignerError, match="unknown key 'tokens'; valid keys: input_ids, positions"):
        MetadataNames.parse("tokens=x")
    with pytest.raises(AlignerError, match="expected KEY=NAME"):
        MetadataNames.parse("input_ids")
    assert get_aligner("concat_steps", metadata="input_ids=ids").names.input_ids == "ids"  # type: ignore[attr-defined]
