"""Unshard planner and executor on synthetic index records (layouts no test run covers)."""

from __future__ import annotations

import pytest
import torch

from comparator.errors import UnshardError
from comparator.replicas import reduction_group_axes, reduction_groups
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


# ------------------------------------------------ overlapping parallel views of one world
# SGLang (and the example engine) describe one world twice: an attention view
# (attn_dp x attn_tp) and a MoE view (ep x moe_tp). Their axes cover the same ranks.
def world(dims: str, *, tp: int, ep: int, dp_attention: int = 1) -> list[IndexRecord]:
    """One record per rank of a ``tp * ep`` world laid out as the example engine does."""
    size = tp * ep
    attn_tp = size // dp_attention
    return [
        record(rank, (2, 3), dims, attn_dp=(rank // attn_tp, dp_attention), attn_tp=(rank % attn_tp, attn_tp),
               ep=(rank // tp, ep), moe_tp=(rank % tp, tp))
        for rank in range(size)
    ]


MOE_PARTIAL = "t h # ep:partial moe_tp:partial attn_dp:replicated attn_tp:replicated"
REDUCED = "t h # attn_dp:replicated attn_tp:replicated ep:replicated moe_tp:replicated"


def test_partial_sums_over_an_axis_that_another_axis_replicates():
    # --tp 2: attn_tp and moe_tp are the same two ranks; the MoE partials sum over moe_tp.
    shards = world(MOE_PARTIAL, tp=2, ep=1)
    data = {0: torch.ones(2, 3), 1: torch.full((2, 3), 2.0)}
    plan = plan_unshard("x", shards)
    assert [(op.axis, op.kind) for op in plan.ops] == [("moe_tp", "sum"), ("attn_tp", "pick")]
    outcome = execute_unshard(plan, lambda r: data[r.rank])
    torch.testing.assert_close(outcome.tensor.float(), torch.full((2, 3), 3.0))
    assert outcome.replica_disagreement == {}  # one copy per position: nothing to verify


def test_partial_sums_over_ep_and_moe_tp_with_a_world_sized_attn_tp():
    shards = world(MOE_PARTIAL, tp=2, ep=2)
    data = {rank: torch.full((2, 3), 10.0 ** rank) for rank in range(4)}
    rebuilt = execute_unshard(plan_unshard("x", shards), lambda r: data[r.rank]).tensor
    torch.testing.assert_close(rebuilt.float(), torch.full((2, 3), 1111.0))


def test_dp_attention_concatenates_over_attn_dp_and_keeps_one_copy_per_dp_rank():
    # --tp 2 --ep 2 --dp-attention 2: attn_dp is ep's ranks, attn_tp is moe_tp's.
    shards = world("t[attn_dp] h # attn_tp:replicated ep:replicated moe_tp:replicated", tp=2, ep=2, dp_attention=2)
    rows = {0: torch.zeros(2, 3), 1: torch.ones(2, 3)}
    outcome = execute_unshard(plan_unshard("x", shards), lambda r: rows[r.parallel["attn_dp"].rank])
    torch.testing.assert_close(outcome.tensor, torch.cat([rows[0], rows[1]]))
    assert outcome.replica_disagreement == {"attn_tp": 0.0, "ep": 0.0, "moe_tp": 0.0}


def test_reduction_groups_follow_the_view_each_axis_belongs_to():
    shards = world(REDUCED, tp=2, ep=2)
    assert reduction_groups(shards, "ep") == ((0, 2), (1, 3))
    assert reduction_groups(shards, "moe_tp") == ((0, 1), (2, 3))
    assert reduction_groups(shards, "attn_tp") == ((0, 1, 2, 3),)  # the whole world: finer than ep and moe_tp
    assert reduction_group_axes(shards, "ep") == ("moe_tp",)
    # --tp 2: attn_tp and moe_tp are one group of the same two ranks.
    pair = world(REDUCED, tp=2, ep=1)
    assert reduction_groups(pair, "attn_tp") == reduction_groups(pair, "moe_tp") == ((0, 1),)


def test_a_missing_ep_reduction_is_charged_to_ep_not_moe_tp_and_its_sum_is_the_baseline():
    # Seed 1 on TP2 x EP2: moe_tp was reduced, ep was not: ranks 0, 1 hold one EP
    # partial sum, ranks 2, 3 the other.
    shards = world(REDUCED, tp=2, ep=2)
    partial = {0: torch.ones(2, 3), 1: torch.full((2, 3), 4.0)}
    plan = plan_unshard("x", shards)

    def load(r):
        return partial[r.parallel["ep"].rank]

    outcome = execute_unshard(plan, load)
    torch.testing.assert_close(outcome.tensor, partial[0])
    assert outcome.replica_disagreement["moe_tp"] == 0.0
    assert outcome.replica_disagreement["ep"] == outcome.replica_disagreement["attn_tp"] == pytest.approx(1 - 8 / 17)
    by_ep = execute_unshard(plan, load, sum_axes=frozenset({"ep"}), verify_replicas=False).tensor
    torch.testing.assert_close(by_ep.float(), torch.full((2, 3), 5.0))
    by_attn_tp = execute_unshard(plan, load, sum_axes=frozenset({"attn_tp"}), verify_replicas=False).tensor
    torch.testing.assert_close(by_attn_tp.float(), torch.full((2, 3), 10.0))  # every rank: not a reduction group of ep


def test_copies_disagreeing_only_across_groups_are_still_charged_to_the_axis():
    # Independent tp x dp (no overlap): the copy at (tp=1, dp=1) is checked against (tp=0, dp=1).
    shards = [record(rank, (2, 3), "t h # tp:replicated dp:replicated", tp=(rank % 2, 2), dp=(rank // 2, 2))
              for rank in range(4)]
    data = {0: torch.ones(2, 3), 1: torch.ones(2, 3), 2: torch.ones(2, 3), 3: torch.full((2, 3), 3.0)}
    outcome = execute_unshard(plan_unshard("x", shards), lambda r: data[r.rank])
    assert outcome.replica_disagreement["tp"] == pytest.approx(1 - 6 / 10)
    assert outcome.replica_disagreement["dp"] == pytest.approx(1 - 6 / 10)


def test_summing_a_replicated_axis_with_a_rank_missing_is_an_error():
    shards = world(REDUCED, tp=2, ep=2)[0::2]  # ranks 0 and 2: no moe_tp rank 1
    plan = plan_unshard("x", shards)  # a copy may be missing: one is enough
    assert execute_unshard(plan, lambda r: torch.ones(2, 3)).tensor.shape == (2, 3)
    with pytest.raises(UnshardError, match=r"no shard from moe_tp rank\(s\) 1 of 2"):
        execute_unshard(plan, lambda r: torch.ones(2, 3), sum_axes=frozenset({"moe_tp"}))
