"""Unshard planner and executor on synthetic index records (layouts no test run covers)."""

from __future__ import annotations

import pytest
import torch

from comparator.errors import UnshardError
from comparator.unshard import execute_unshard, plan_unshard
from dumper.format import AxisInfo, IndexRecord, TensorStats


def record(rank: int, shape, dims, **axes) -> IndexRecord:
    return IndexRecord(
        seq=0, step=0, name="x", tags={}, rank=rank, world_size=4,
        parallel={a: AxisInfo(rank=r, size=s) for a, (r, s) in axes.items()}, dtype="float32", shape=tuple(shape),
        dims=dims, stats=TensorStats(numel=0, min=None, max=None, mean=None, abs_mean=None, std=None, l2=None, nan=0, inf=0),
        checksum="", file="f", key=str(rank), nbytes=0, time=0.0,
    )


def test_two_axes_split_one_dim_and_sum_another():
    full = torch.arange(48, dtype=torch.float32).reshape(3, 16)
    # tp (outer) x ep (inner) split h; dp holds partial sums (halves).
    shards, tensors = [], {}
    rank = 0
    for tp in range(2):
        for ep in range(2):
            for dp in range(2):
                piece = full[:, (tp * 2 + ep) * 4 : (tp * 2 + ep + 1) * 4] / 2
                shards.append(record(rank, piece.shape, "t h[tp,ep] # dp:partial", tp=(tp, 2), ep=(ep, 2), dp=(dp, 2)))
                tensors[rank] = piece
                rank += 1
    plan = plan_unshard("x", shards)
    assert plan.shape == (3, 16)
    assert [op.kind for op in plan.ops] == ["sum", "concat", "concat"]
    rebuilt = execute_unshard(plan, lambda r: tensors[r.rank]).tensor
    torch.testing.assert_close(rebuilt.float(), full)


def test_replicas_are_verified_and_can_be_summed():
    a, b = torch.ones(2, 3), torch.full((2, 3), 3.0)
    shards = [record(0, (2, 3), "t h # tp:replicated", tp=(0, 2)), record(1, (2, 3), "t h # tp:replicated", tp=(1, 2))]
    plan = plan_unshard("x", shards)
    data = {0: a, 1: b}
    outcome = execute_unshard(plan, lambda r: data[r.rank])
    torch.testing.assert_close(outcome.tensor, a)
    assert outcome.replica_disagreement["tp"] == pytest.approx(1 - 2 * 3 / 10)
    summed = execute_unshard(plan, lambda r: data[r.rank], sum_axes=frozenset({"tp"})).tensor
    torch.testing.assert_close(summed.float(), a + b)


def test_alias_names_the_run_axis():
    shards = [record(r, (2, 3), "t h[dp] # dp:=attn_dp", attn_dp=(r, 2)) for r in range(2)]
    plan = plan_unshard("x", shards)
    assert plan.shape == (2, 6) and plan.ops[0].axis == "attn_dp"


@pytest.mark.parametrize(
    ("shards", "message"),
    [
        ([record(0, (2, 3), "t h", tp=(0, 2)), record(1, (2, 3), "t h", tp=(1, 2))],
         "axis tp has size 2 but dims 't h' do not say how its ranks combine"),
        ([record(0, (2, 3), None, tp=(0, 2)), record(1, (2, 3), None, tp=(1, 2))],
         "dumped by 2 tp ranks without a dims annotation"),
        ([record(0, (2, 3), "t h[tp]", tp=(0, 2))], "no shard from tp rank(s) 1 of 2"),
        ([record(0, (2, 3), "t h[tp]", tp=(0, 2)), record(1, (2, 3), "t h[tp]", tp=(0, 2))], "ranks 0 and 1 both hold tp=0"),
        ([record(0, (2, 3), "t h[tp]", tp=(0, 2)), record(1, (3, 3), "t h[tp]", tp=(1, 2))], "differ outside dim 1"),
        ([record(0, (2, 3, 4), "t h", tp=(0, 1))], "name 2 dims but rank 0 dumped shape [2, 3, 4]"),
        ([record(0, (2, 3), "t h[tp]", tp=(0, 2)), record(1, (2, 3), "t h", tp=(1, 2))], "ranks disagree on dims"),
        ([record(0, (2, 3), "t h"), record(1, (2, 3), "t h")], "no parallel axis tells how they combine"),
    ],
)
def test_layout_errors_name_the_tensor_and_the_fix(shards, message):
    with pytest.raises(UnshardError, match="^x: .*" + message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        plan_unshard("x", shards)


def test_axis_held_by_one_rank_only_is_noted_not_an_error():
    plan = plan_unshard("x", [record(0, (2, 3), "t h", pp=(1, 2))])
    assert plan.ops == () and plan.notes == ("only pp rank 1 of 2 dumped it",)


def test_override_dims_replaces_the_annotation():
    shards = [record(r, (2, 3), "t h", tp=(r, 2)) for r in range(2)]
    assert plan_unshard("x", shards, dims="t h[tp]").shape == (2, 6)
