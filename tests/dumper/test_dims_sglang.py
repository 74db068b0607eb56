"""SGLang's dims strings mean the same to us: fused dims, squeeze dims, qualifiers, zigzag splits.

The cases follow the grammar of SGLang's comparator (``dims_spec/``): tokens split on
spaces, ``1`` a size-1 dim, ``(a*b)`` a fused dim, ``[axis:qualifier+qualifier]``
with qualifiers partial/zigzag/natural/sharded, and a ``#`` section with
``axis:replicated`` and ``dp:=group``.
"""

from __future__ import annotations

import pytest
import torch

from dumper.dims import parse_dims
from comparator.errors import DimsSyntaxError, UnshardError
from comparator.unshard import execute_unshard, plan_unshard
from tests.comparator.test_unshard import record

SGLANG_AXES = ("tp", "cp", "ep", "sp", "dp", "etp", "edp", "attn_tp", "attn_dp", "moe_ep", "moe_tp", "moe_dp")


@pytest.mark.parametrize("axis", SGLANG_AXES)
def test_every_sglang_axis_is_accepted_in_every_role(axis):
    assert parse_dims(f"t h[{axis}]").sharded == {axis: 1}
    assert parse_dims(f"t h[{axis}:partial]").partial == (axis,)
    assert parse_dims(f"t h # {axis}:replicated").replicated == (axis,)


@pytest.mark.parametrize(
    ("text", "sharded", "partial", "replicated", "aliases", "names"),
    [
        ("t h[tp]", {"tp": 1}, (), (), {}, ["t", "h"]),
        ("t h[tp:partial]", {}, ("tp",), (), {}, ["t", "h"]),
        ("t h # tp:replicated", {}, (), ("tp",), {}, ["t", "h"]),
        ("t (num_heads*head_dim)[tp]", {"tp": 1}, (), (), {}, ["t", "(num_heads head_dim)"]),
        ("t num_heads*head_dim[tp]", {"tp": 1}, (), (), {}, ["t", "(num_heads head_dim)"]),
        ("b s[cp:zigzag] h[tp] d # dp:=moe_dp ep:replicated", {"cp": 1, "tp": 2}, (), ("ep",), {"dp": "moe_dp"},
         ["b", "s", "h", "d"]),
        ("t h[tp:sharded]", {"tp": 1}, (), (), {}, ["t", "h"]),
        ("t h[tp:natural]", {"tp": 1}, (), (), {}, ["t", "h"]),
        ("s[cp:zigzag+partial] h", {}, ("cp",), (), {}, ["s", "h"]),
        ("t h[attn_tp] # dp:=attn_dp", {"attn_tp": 1}, (), (), {"dp": "attn_dp"}, ["t", "h"]),
        ("1 t h", {}, (), (), {}, ["1", "t", "h"]),
    ],
)
def test_sglang_dims_strings_parse(text, sharded, partial, replicated, aliases, names):
    spec = parse_dims(text)
    assert spec.sharded == sharded
    assert spec.partial == partial and spec.replicated == replicated and spec.aliases == aliases
    assert [dim.name for dim in spec.dims] == names


def test_fused_spellings_are_the_same_dim_after_squeezing():
    assert parse_dims("1 t (a*b)[tp]").squeezed().text == "t (a b)[tp]"
    assert parse_dims("t (a b)[tp]").squeezed().text == "t (a b)[tp]"
    assert parse_dims("1 t h # tp:replicated").squeezed().text == "t h # tp:replicated"
    assert parse_dims("1 t h").squeezed().token_dim == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t h[tp:sum]", "unknown qualifier 'sum'"),
        ("t h[tp:zigzag+natural]", "two orderings"),
        ("t h[tp:partial+partial]", "repeats a qualifier"),
        ("t h[tp] # tp:replicated", "used twice"),
    ],
)
def test_bad_sglang_strings_say_what_is_wrong(text, message):
    with pytest.raises(DimsSyntaxError, match=message):
        parse_dims(text)


def test_squeeze_dims_are_dropped_and_checked():
    shards = [record(r, (1, 3, 2), "1 t h[tp]", tp=(r, 2)) for r in range(2)]
    plan = plan_unshard("x", shards)
    assert plan.shape == (3, 4) and plan.dims.text == "t h[tp]" and plan.token_dim == 0
    assert "drop size-1 dim 0" in plan.describe()
    data = {r: torch.full((1, 3, 2), float(r)) for r in range(2)}
    rebuilt = execute_unshard(plan, lambda rec: data[rec.rank]).tensor
    torch.testing.assert_close(rebuilt, torch.cat([data[0][0], data[1][0]], dim=1))
    with pytest.raises(UnshardError, match="'1' \\(a dim of size 1"):
        plan_unshard("x", [record(0, (2, 3), "1 t")])


def test_zigzag_split_is_put_back_in_natural_order():
    cp = 2
    sequence = torch.arange(8, dtype=torch.float32).reshape(8, 1)
    chunks = sequence.chunk(2 * cp)
    held = {r: torch.cat([chunks[r], chunks[2 * cp - 1 - r]]) for r in range(cp)}
    shards = [record(r, held[r].shape, "s[cp:zigzag] h", cp=(r, cp)) for r in range(cp)]
    plan = plan_unshard("x", shards)
    assert plan.ops[0].zigzag and "zigzag" in plan.describe()
    torch.testing.assert_close(execute_unshard(plan, lambda rec: held[rec.rank]).tensor, sequence)
    odd = [record(r, (3, 1), "s[cp:zigzag] h", cp=(r, cp)) for r in range(cp)]
    with pytest.raises(UnshardError, match="even number"):
        plan_unshard("x", odd)
