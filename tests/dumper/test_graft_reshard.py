"""The graft's resharding inverse: unshard(reshard(x)) == x, through the comparator's real unsharder."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comparator.unshard import execute_unshard, plan_unshard
from dumper.dims import parse_dims
from dumper.format import AxisInfo, IndexRecord, TensorStats
from dumper.graft import GraftError, reshard

AXES = ("tp", "ep", "cp", "dp")
NO_STATS = TensorStats(numel=0, min=None, max=None, mean=None, abs_mean=None, std=None, l2=None, nan=0, inf=0)


def record(rank: int, world: int, piece: torch.Tensor, dims: str, coords: dict[str, AxisInfo]) -> IndexRecord:
    return IndexRecord(seq=0, step=0, name="x", tags={}, rank=rank, world_size=world, parallel=dict(coords),
                       dtype=str(piece.dtype).removeprefix("torch."), shape=tuple(piece.shape), dims=dims,
                       stats=NO_STATS, checksum="", file="f", key=str(rank), nbytes=0, time=0.0)


def roundtrip(full: torch.Tensor, dims: str, sizes: dict[str, int]) -> torch.Tensor:
    """Reshard ``full`` for every rank of the grid of ``sizes``, then unshard the pieces."""
    names = sorted(sizes)
    pieces, records = {}, []
    for rank, coords in enumerate(itertools.product(*(range(sizes[a]) for a in names))):
        parallel = {axis: AxisInfo(rank=c, size=sizes[axis]) for axis, c in zip(names, coords)}
        piece = reshard(full, dims, parallel)
        pieces[rank] = piece
        records.append(record(rank, math.prod(sizes.values()), piece, dims, parallel))
    plan = plan_unshard("x", records)
    return execute_unshard(plan, lambda r: pieces[r.rank]).tensor


@st.composite
def layouts(draw):
    """A dims text the comparator accepts, the axis sizes, and a logical shape that fits them."""
    axes = list(draw(st.permutations(AXES)))[: draw(st.integers(0, len(AXES)))]
    sizes = {axis: draw(st.integers(1, 3)) for axis in axes}
    ndim = draw(st.integers(1, 3))
    tokens: list[str] = []
    comment: list[str] = []
    factors = [1] * ndim
    split_on: dict[int, list[str]] = {}
    for axis in axes:
        role = draw(st.sampled_from(("split", "zigzag", "partial", "partial_comment", "replicated")))
        if role in ("split", "zigzag"):
            dim = draw(st.integers(0, ndim - 1))
            split_on.setdefault(dim, []).append(axis + (":zigzag" if role == "zigzag" else ""))
            factors[dim] *= sizes[axis] * (2 if role == "zigzag" else 1)
        elif role == "partial":
            split_on.setdefault(draw(st.integers(0, ndim - 1)), []).append(axis + ":partial")
        elif role == "partial_comment":
            comment.append(f"{axis}:partial")
        else:
            comment.append(f"{axis}:replicated")
    shape = []
    for dim in range(ndim):
        name = "t" if dim == 0 else f"d{dim}"
        grouped = dim > 0 and draw(st.booleans())
        shard = f"[{','.join(split_on[dim])}]" if dim in split_on else ""
        plain = [s for s in split_on.get(dim, []) if not s.endswith(":partial")]
        partial = [s for s in split_on.get(dim, []) if s.endswith(":partial")]
        if grouped and not partial:
            # '(a[tp] b)': one tensor dim of a*b values whose outer part is split
            inner = draw(st.integers(1, 2))
            tokens.append(f"({name}{'[' + ','.join(plain) + ']' if plain else ''} e{dim})")
            shape.append(factors[dim] * draw(st.integers(1, 2)) * inner)
        else:
            tokens.append(name + shard)
            shape.append(factors[dim] * draw(st.integers(1, 2)))
    squeeze_at = draw(st.integers(0, ndim)) if draw(st.booleans()) else None
    if squeeze_at is not None:
        tokens.insert(squeeze_at, "1")
    dims = " ".join(tokens) + (" # " + " ".join(comment) if comment else "")
    return dims, sizes, tuple(shape)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts(), st.integers(0, 2**31 - 1))
def test_unshard_inverts_reshard(layout, seed):
    dims, sizes, shape = layout
    parse_dims(dims)  # the comparator's grammar accepts it
    full = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(roundtrip(full, dims, sizes).to(full.dtype), full)


@pytest.mark.parametrize("dims", [
    "t h[dp] # dp:=attn_dp",
    "t (num_heads*head_dim)[tp]",
    "s[cp:zigzag] h[tp:sharded]",
    "t h[tp:zigzag+partial]",
    "1 t h[tp,ep] # dp:partial",
    "t h[tp:natural]",
])
def test_sglang_spellings_roundtrip(dims):
    spec = parse_dims(dims)
    sizes = {axis: 2 for axis in spec.mentioned}
    full = torch.randn(8, 16)
    torch.testing.assert_close(roundtrip(full, dims, sizes).float(), full)


def test_partial_sum_puts_the_value_on_one_rank():
    full = torch.randn(3, 4)
    on = reshard(full, "t h # ep:partial", {"ep": AxisInfo(rank=0, size=2)})
    off = reshard(full, "t h # ep:partial", {"ep": AxisInfo(rank=1, size=2)})
    torch.testing.assert_close(on, full)
    assert off.shape == full.shape and not off.any()


def test_overlapping_views_of_the_example_engine():
    """TP2 x EP2: attn_tp spans the world, ep x moe_tp the grid; the MoE partial sums and replicated outputs."""
    full = torch.randn(5, 8)
    for dims in ("t h # ep:partial moe_tp:partial attn_dp:replicated attn_tp:replicated",
                 "t h # attn_dp:replicated attn_tp:replicated ep:replicated moe_tp:replicated"):
        pieces, records = {}, []
        for rank in range(4):
            parallel = {"attn_tp": AxisInfo(rank=rank, size=4), "attn_dp": AxisInfo(rank=0, size=1),
                        "ep": AxisInfo(rank=rank // 2, size=2), "moe_tp": AxisInfo(rank=rank % 2, size=2)}
            pieces[rank] = reshard(full, dims, parallel)
            records.append(record(rank, 4, pieces[rank], dims, parallel))
        rebuilt = execute_unshard(plan_unshard("x", records), lambda r, pieces=pieces: pieces[r.rank]).tensor
        torch.testing.assert_close(rebuilt.float(), full)


@pytest.mark.parametrize(("dims", "parallel", "message"), [
    ("t h", {"tp": AxisInfo(rank=0, size=2)}, "do not say how axis tp"),
    (None, {"tp": AxisInfo(rank=0, size=2)}, "no dims annotation"),
    ("t h[tp]", {"tp": AxisInfo(rank=0, size=3)}, "cannot split"),
    ("t h d", {}, "holds 2 dims"),
])
def test_refusals_say_why(dims, parallel, message):
    with pytest.raises(GraftError, match=message):
        reshard(torch.zeros(4, 4), dims, parallel)


def test_graft_value_casts_to_the_engine_and_refuses_what_cannot_fit():
    from dumper.graft import graft_value

    full = torch.randn(4, 6, dtype=torch.float64)
    engine = torch.zeros(4, 3, dtype=torch.bfloat16)
    got = graft_value(full, engine, "t h[tp]", {"tp": AxisInfo(rank=1, size=2)}, label="x")
    assert got.dtype == torch.bfloat16 and torch.equal(got, full[:, 3:].to(torch.bfloat16))
    with pytest.raises(GraftError, match=r"shard of the baseline is \[4, 6\] where the engine holds \[5, 6\]"):
        graft_value(full, torch.zeros(5, 6), "t h", {}, label="x")
    with pytest.raises(GraftError, match="floating types only"):
        graft_value(full, torch.zeros(4, 6, dtype=torch.int64), "t h", {}, label="x")
    cached = torch.randn(2, 2)
    out = graft_value(cached, torch.zeros(2, 2), "t h", {}, label="x")
    out.add_(1)  # the engine writes into what it got: the plan's tensor stays
    assert not torch.equal(out, cached)


def test_graft_point_in_process_returns_the_baseline_and_writes_the_flagged_record(tmp_path):
    """The engine side alone: a plan on disk, a Dumper, a graft point; the record is written whatever --filter keeps."""
    from dumper.api import Dumper
    from dumper.graft import GraftEntry, GraftPlan, write_graft_plan
    from dumper.reader import open_run

    baseline = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    entry = GraftEntry(name="moe_output", step=0, tags={"layer": 1}, key="g0", shape=(3, 4), dtype="float64",
                       baseline_step=0)
    write_graft_plan(str(tmp_path / "plan"), GraftPlan(baseline="/runs/base", filter="name~moe", aligner="none",
                                                       entries=(entry,)), {"g0": baseline})
    dumper = Dumper()
    dumper.configure(dir=str(tmp_path / "run"), collectives=False, graft=str(tmp_path / "plan"), filter="name~nothing")
    dumper.set_parallel(tp=(1, 2))
    engine = torch.zeros(3, 2)
    with dumper.tags(layer=1):
        got = dumper.graft_point("moe_output", engine, dims="t h[tp]")
        other = dumper.graft_point("moe_output", engine, dims="t h[tp]", layer=2)  # not in the plan
    assert torch.equal(got, baseline[:, 2:].float()) and other is engine
    dumper.step()
    assert dumper.graft_point("moe_output", engine, dims="t h[tp]", layer=1) is engine  # step 1: not planned
    dumper.close()
    with open_run(tmp_path / "run") as run:
        assert [(r.name, r.tags, r.graft) for r in run.records] == [("moe_output", {"layer": 1}, "/runs/base")]
