from __future__ import annotations

import pytest

from dumper.dims import parse_dims
from comparator.errors import DimsSyntaxError


def test_split_partial_replicated_and_alias():
    spec = parse_dims("t h[tp,ep] # dp:replicated x:=attn_dp")
    assert [d.name for d in spec.dims] == ["t", "h"]
    assert spec.dims[1].shards == ("tp", "ep")
    assert spec.replicated == ("dp",) and spec.aliases == {"x": "attn_dp"}
    assert spec.token_dim == 0
    assert parse_dims("t h[ep:partial]").partial == ("ep",)
    assert parse_dims("t h # ep:partial").partial == ("ep",)
    assert parse_dims("* h[dp] # dp:=attn_dp").sharded == {"attn_dp": 1}


def test_grouped_dims():
    spec = parse_dims("t (h[tp] d)")
    assert spec.ndim == 2 and spec.dims[1].parts == ("h", "d") and spec.dims[1].shards == ("tp",)
    assert parse_dims("b (h d)").token_dim is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t h[", "unbalanced brackets"),
        ("t h[tp]x", "put a space between dims"),
        ("# tp:replicated", "no dimensions named"),
        ("t h # tp:copied", "unknown role 'copied'"),
        ("t h[tp] # tp:replicated", "axis 'tp' is used twice"),
        ("t (h d[tp])", "only the first part of a grouped dim can be split"),
        ("t h[tp:sum]", "is not a split"),
    ],
)
def test_syntax_errors_say_what_is_valid(text, message):
    with pytest.raises(DimsSyntaxError, match=message.replace("[", r"\[")):
        parse_dims(text)
