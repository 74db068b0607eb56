from __future__ import annotations

import json

import pytest

from dumper.errors import FilterSyntaxError
from dumper.filters import DumpFilter, IntSet, parse_filter
from tests.helpers.procs import dump_run


def keeps(f: DumpFilter, name="attn_out", step=0, rank=0, **tags) -> bool:
    return f.keeps(name=name, step=step, rank=rank, tags=tags)


def test_empty_filter_keeps_everything():
    f = parse_filter("")
    assert f.keeps_everything and keeps(f)


def test_name_include_and_exclude():
    f = parse_filter("name~attn|mlp name!~norm")
    assert keeps(f, name="attn_out") and keeps(f, name="mlp_out")
    assert not keeps(f, name="attn_norm") and not keeps(f, name="logits")


def test_steps_ranks_and_ranges():
    f = parse_filter("step=0:2,7 rank=1")
    assert [s for s in range(10) if keeps(f, step=s, rank=1)] == [0, 1, 2, 7]
    assert not keeps(f, step=0, rank=0)
    open_end = parse_filter("step=5:")
    assert keeps(open_end, step=500) and not keeps(open_end, step=4)


def test_tag_clauses():
    f = parse_filter("layer=0:2 phase!=decode")
    assert keeps(f, layer=1) and keeps(f, layer=2, phase="prefill")
    assert not keeps(f, layer=3) and not keeps(f, layer=0, phase="decode")
    assert not keeps(f), "an include clause on a tag the record lacks drops it"
    assert keeps(parse_filter("phase!=decode")), "an exclude clause on a missing tag keeps it"
    assert keeps(parse_filter("kind=moe,dense"), kind="dense")


def test_structured_filter_from_code():
    f = DumpFilter.with_tags(layer={0, 1, 2})
    assert keeps(f, layer=2) and not keeps(f, layer=3)
    g = DumpFilter(names=("mlp",), steps=IntSet.of([0]))
    assert keeps(g, name="mlp_out") and not keeps(g, name="mlp_out", step=1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("layer", "cannot parse filter clause 'layer'"),
        ("step=a:b", "'a' in 'a:b' is not an integer"),
        ("step=3:1", "range '3:1' is empty"),
        ("name=attn", "use name~REGEX or name!~REGEX"),
        ("layer~1", "regex match (~) is only for names"),
        ("name~(", "filter name regex '(' is not a valid regular expression"),
        ("step!=1", "step takes '=' with numbers and ranges"),
    ],
)
def test_errors_are_clear(text, message):
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    assert message in str(info.value)


def test_filter_from_env_in_a_real_process(tmp_path):
    run_dir = tmp_path / "run"
    dump_run(
        run_dir,
        """
        import torch
        from dumper import dumper
        calls = []
        for step in range(3):
            for layer in range(4):
                with dumper.tags(layer=layer):
                    dumper.dump("attn_out", torch.ones(2))
                    dumper.dump("norm", lambda: calls.append(1) or torch.ones(2))
            dumper.step()
        assert calls == [], "a filtered lazy value must never be computed"
        """,
        DUMPCMP_FILTER="name!~norm step=1: layer=0,3",
    )
    lines = (run_dir / "rank-00000" / "index.jsonl").read_text().splitlines()
    kept = [(r["name"], r["step"], r["tags"]["layer"]) for r in map(json.loads, lines)]
    assert kept == [("attn_out", s, layer) for s in (1, 2) for layer in (0, 3)]
