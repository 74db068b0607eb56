"""Loading patch files: the schema, and one clear message per kind of bad input."""

import pytest

from patches import PatchFileError, load_patch_file, parse_patch_text
from tests.patches.sites import unguarded


def test_sglang_schema_loads_unchanged():
    patch_file = parse_patch_text(
        """
patches:
  - target: pkg.mod.Attention.forward
    preamble: "import math"
    edits:
      - match: "output, _ = self.o_proj(attn_output)"
        prepend: "dumper.dump('attn_pre_o_proj', attn_output, dims='t h[tp]')"
      - match: "x = 1"
        replacement: ""
""",
        path="s.yaml",
    )
    (patch,) = patch_file.patches
    assert patch.target == "pkg.mod.Attention.forward"
    assert [(e.mode, e.match) for e in patch.edits] == [
        ("prepend", "output, _ = self.o_proj(attn_output)"), ("replacement", "x = 1")]
    assert patch.preamble is not None and patch.preamble.text == "import math"


def test_dump_entries_generate_the_call():
    patch_file = parse_patch_text(
        """
patches:
  - target: pkg.mod.f
    edits:
      - at: return
        prepend:
          - dump: out
            dims: "t h # tp:replicated"
            tags: {expert: self.expert_id}
          - dump: logits
            expr: router_logits.float()
""",
        path="d.yaml",
    )
    texts = [unguarded(snippet.text) for snippet in patch_file.patches[0].edits[0].code]
    assert texts == [
        "dumper.dump('out', __ret__, dims='t h # tp:replicated', expert=self.expert_id)",
        "dumper.dump('logits', router_logits.float())",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patches:\n  - target: [a\n", "bad.yaml:3:1: YAML error: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence)"),
        ("patches:\n  - target: a.b\n    edit: []\n",
         "bad.yaml:3:5: unknown key 'edit' in a patch (did you mean 'edits'?); valid keys: target, edits, tags, step, preamble"),
        ("patches:\n  - target: a.b\n    edits:\n      - match: x\n        apend: y\n",
         "bad.yaml:5:9: unknown key 'apend' in an edit (did you mean 'append'?); valid keys: match, at, prepend, append, replacement"),
        ("patches:\n  - target: a.b\n    edits:\n      - match: x\n        append: |\n          ok = 1\n          if ok\n",
         "bad.yaml:7: syntax error in injected code (edit 1 of a.b): expected ':'"),
        ("patches:\n  - target: a.b\n    edits:\n      - at: entry\n        append: pass\n",
         "bad.yaml:4:9: edit 1 of a.b (at: entry) takes 'prepend': the code to run before the function's first statement"),
        ("patches:\n  - target: a.b\n    edits:\n      - at: middle\n        prepend: pass\n",
         "bad.yaml:4:13: 'at' must be one of entry, return, not 'middle'"),
        ("patches:\n  - target: a.b\n    edits:\n      - match: x\n        prepend: a\n        append: b\n",
         "bad.yaml:4:9: edit 1 of a.b sets prepend and append; only one of prepend, append, replacement may be set"),
        ("patches:\n  - target: a.b\n    tags: {layer: self.(}\n",
         "bad.yaml:3:19: syntax error in tag 'layer' 'self.(': invalid syntax"),
        ("patches:\n  - target: a.b\n    edits:\n      - at: entry\n        prepend:\n          - dump: a.b\n",
         "bad.yaml:6:13: dump 'a.b' needs 'expr:' (the name is not a variable name)"),
        ("patches:\n  - target: justmodule\n    step: true\n",
         "bad.yaml:2:13: target 'justmodule' must be a dotted path module.function or module.Class.method"),
        ("", "bad.yaml: the file is empty; expected a 'patches:' list"),
        ("patchez: []\n", "bad.yaml:1:1: unknown key 'patchez' in the top level (did you mean 'patches'?); valid keys: patches, description"),
    ],
)
def test_bad_input_messages(text, message):
    with pytest.raises(PatchFileError) as error:
        parse_patch_text(text, path="bad.yaml")
    assert str(error.value) == message


def test_missing_file(tmp_path):
    with pytest.raises(PatchFileError, match=r"patch file .*nope.yaml does not exist"):
        load_patch_file(tmp_path / "nope.yaml")
