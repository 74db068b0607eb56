"""``graft: true`` on a dump entry: the patcher injects the assigning form."""

from __future__ import annotations

import pytest

from patches.errors import PatchFileError
from patches.spec import parse_patch_text
from tests.patches.sites import unguarded

TEXT = """
patches:
  - target: m.f
    edits:
      - match: "y = g(x)"
        append:
          - dump: y
            dims: "t h[tp]"
            graft: {graft}
            {expr}
"""


def code(graft: str, expr: str = "") -> str:
    return unguarded(parse_patch_text(TEXT.format(graft=graft, expr=expr)).patches[0].edits[0].code[0].text)


def test_graft_true_assigns_what_graft_point_returns():
    assert code("true") == "y = dumper.graft_point('y', y, dims='t h[tp]')"
    assert code("false") == "dumper.dump('y', y, dims='t h[tp]')"
    assert code("true", "expr: self.out[0]") == "self.out[0] = dumper.graft_point('y', self.out[0], dims='t h[tp]')"


@pytest.mark.parametrize(("graft", "expr", "message"), [
    ("true", "expr: a + b", "cannot be assigned to"),
    ("yes please", "", "must be true or false"),
])
def test_bad_graft_entries(graft, expr, message):
    with pytest.raises(PatchFileError, match=message):
        code(graft, expr)
