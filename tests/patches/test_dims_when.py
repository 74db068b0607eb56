"""Dims that follow the engine's state: ``dims: {when: PATH, then: DIMS, else: DIMS}``."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest

from dumper.api import Dumper
from dumper.reader import open_run
from patches import PatchFileError, load_patch_file, parse_patch_text
from patches.presets import PRESET_DIR
from tests.helpers.example_runs import dumpcmp
from tests.patches.sites import unguarded

CHOICE = """
patches:
  - target: pkg.mod.Runner.forward
    edits:
      - at: return
        prepend:
          - dump: routed
            expr: fused_output
            dims:
              when: WHEN
              then: "t h # tp:replicated"
              else: "t h # tp:partial"
"""


def _dump_code(when: str) -> str:
    (patch,) = parse_patch_text(CHOICE.replace("WHEN", when), path="p.yaml").patches
    return unguarded(patch.edits[0].code[0].text)


def test_an_attribute_path_becomes_a_lookup_by_the_dumper():
    assert _dump_code("self._fused_output_is_reduced") == (
        "dumper.dump('routed', fused_output, dims=dumper.dims_when(self, '_fused_output_is_reduced', "
        "'t h # tp:replicated', 't h # tp:partial'))")
    # A local variable: the value itself decides.
    assert "dims=dumper.dims_when(fused_output_is_reduced, ''," in _dump_code("fused_output_is_reduced")


@pytest.mark.parametrize("when, message", [
    ("self.is_reduced()", "must be a variable or attribute path such as self._fused_output_is_reduced"),
    ("self.a or True", "must be a variable or attribute path"),
    ("__import__('os').system", "must be a variable or attribute path"),
])
def test_anything_but_a_path_is_refused(when, message):
    with pytest.raises(PatchFileError, match="p.yaml:10:21: ") as info:
        _dump_code(f'"{when}"')
    assert message in str(info.value)


def test_a_choice_needs_three_keys_and_valid_dims():
    text = CHOICE.replace("WHEN", "self.x").replace('              else: "t h # tp:partial"\n', "")
    with pytest.raises(PatchFileError, match=r"needs when, then and else \(missing: else\)"):
        parse_patch_text(text, path="p.yaml")
    with pytest.raises(PatchFileError, match="'then' of 'dims' of dump 'routed'"):
        parse_patch_text(CHOICE.replace("WHEN", "self.x").replace("t h # tp:replicated", "t h[tp"), path="p.yaml")


class _State:
    def __init__(self, reduced: object) -> None:
        self.kernel = type("Kernel", (), {"reduced": reduced})()


def test_the_dumper_looks_the_path_up_and_never_raises(caplog):
    dumper = Dumper()
    assert dumper.dims_when(_State(True), "kernel.reduced", "A", "B") == "A"
    assert dumper.dims_when(_State(0), "kernel.reduced", "A", "B") == "B"
    assert dumper.dims_when(True, "", "A", "B") == "A"
    with caplog.at_level(logging.WARNING):
        assert dumper.dims_when(_State(True), "kernel.missing", "A", "B") is None
        assert dumper.dims_when(_State(True), "kernel.missing", "A", "B") is None
    assert sum("cannot read kernel.missing to choose dims" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("preset, sites", [
    ("vllm/qwen3_moe.yaml", {"routed_expert_output": "self, '_fused_output_is_reduced'",
                             "shared_expert_output": "fused_output_is_reduced, ''"}),
    ("vllm/deepseek_v2.yaml", {"routed_expert_output": "self, '_fused_output_is_reduced'",
                               "shared_expert_output": "fused_output_is_reduced, ''"}),
    ("sglang/qwen3_moe.yaml", {"routed_expert_output": "self, 'experts.reduce_results'"}),
    ("sglang/deepseek_v2.yaml", {"routed_expert_output": "self, 'reduce_results'",
                                 "shared_expert_output": "self, 'shared_experts.down_proj.reduce_results'"}),
])
def test_presets_choose_the_moe_outputs_dims_from_the_engine(preset, sites):
    texts = [unguarded(snippet.text) for patch in load_patch_file(os.path.join(PRESET_DIR, preset)).patches
             for edit in patch.edits for snippet in edit.code]
    for name, lookup in sites.items():
        (code,) = [t for t in texts if t.startswith(f"dumper.dump({name!r}")]
        assert f"dims=dumper.dims_when({lookup}, 't h # tp:replicated', 't h # tp:partial')" in code


# The example engine's MoE block reduces its output itself, unless --fusion defers the
# reduction to the next add + norm: the dims of a dump right after reduce_output follow.
ENGINE_PATCH = """
patches:
  - target: examples.moe_engine.model.MoEBlock.forward
    tags: {layer: self.layer_id}
    edits:
      - match: "moe_out = self.reduce_output(moe_out)"
        append:
          - dump: block_output
            expr: moe_out
            dims:
              when: self.defer_reduction
              then: "t h # ep:partial moe_tp:partial attn_dp:replicated attn_tp:replicated"
              else: "t h # attn_dp:replicated attn_tp:replicated ep:replicated moe_tp:replicated"
"""


@pytest.mark.parametrize("fusion", [False, True])
def test_both_branches_on_the_example_engine(tmp_path, fusion):
    patch = tmp_path / "block.yaml"
    patch.write_text(ENGINE_PATCH)
    runs = {}
    for name, args in (("base", []), ("target", ["--tp", "2", "--ep", "2", *(["--fusion"] if fusion else [])])):
        runs[name] = tmp_path / name
        proc = dumpcmp("run", "--patch", "example/moe_engine", "--patch", str(patch), "--dir", str(runs[name]), "--",
                       sys.executable, "-m", "examples.moe_engine", *args)
        assert proc.returncode == 0, proc.stderr
    with open_run(runs["target"]) as run:
        dims = {r.dims for r in run.records if r.name == "block_output"}
    assert dims == {"t h # ep:partial moe_tp:partial attn_dp:replicated attn_tp:replicated" if fusion else
                    "t h # attn_dp:replicated attn_tp:replicated ep:replicated moe_tp:replicated"}
    # Either way the unsharded target matches the single-process baseline.
    proc = dumpcmp("compare", str(runs["base"]), str(runs["target"]), "--names", "^block_output$", "--format", "json")
    assert proc.returncode == 0, proc.stdout
    summary = json.loads(proc.stdout)["summary"]
    assert summary["passed"] == summary["total"] == 8  # MoE layers 1 and 2 (layer 0 is dense) x 4 steps
