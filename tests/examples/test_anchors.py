"""The engine's dump anchors: single-line statements that patches match, once each.

A preset (patches/presets/example/) and docs/example-engine.md rely on these lines; a
refactor that changes one must update both, and this test says which.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

ENGINE_DIR = Path(__file__).resolve().parents[2] / "examples" / "moe_engine"

ANCHORS = {
    "examples.moe_engine.engine.Engine.forward_step": [
        "input_ids = batch.input_ids",
        "positions = batch.positions",
        "token_req_ids = batch.token_req_ids",
        "req_ids = batch.req_ids",
        "seq_lens = batch.seq_lens",
        "extend_lens = batch.extend_lens",
        "num_tokens_per_dp_rank = batch.num_tokens_per_dp_rank",
        "logits = self.model(input_ids, batch)",
    ],
    "examples.moe_engine.model.MoEModel.forward": [
        "hidden = self.embed_tokens(input_ids)",
        "hidden, residual = layer(hidden, residual, batch)",
        "hidden, residual = self.final_norm(hidden, residual)",
        "logits = self.lm_head(last_hidden).float()",
    ],
    "examples.moe_engine.model.DecoderLayer.forward": [
        "hidden, residual = self.input_norm(hidden, residual)",
        "attn_out = self.attention(hidden, batch)",
        "hidden, residual = self.post_attention_norm(attn_out, residual)",
        "hidden = self.gather_dp_tokens(hidden, batch)",
        "mlp_out = self.mlp(hidden)",
        "mlp_out = self.scatter_dp_tokens(mlp_out, batch)",
    ],
    "examples.moe_engine.model.Attention.forward": [
        "attn_out = self.o_proj(attn.flatten(1))",
        'attn_out = self.comm.all_reduce(attn_out, "attn_tp")',
    ],
    "examples.moe_engine.model.DenseMLP.forward": [
        "mlp_out = self.down_proj(F.silu(gate) * up)",
        "mlp_out = self.reduce_output(mlp_out)",
    ],
    "examples.moe_engine.model.MoEBlock.forward": [
        "router_logits = self.router(hidden)",
        "topk_weights, topk_ids = self.select_experts(router_logits)",
        "routed = self.experts(hidden, topk_weights, topk_ids)",
        "shared = self.shared_experts(hidden)",
        "moe_out = routed + shared",
        "moe_out = self.reduce_output(moe_out)",
    ],
    "examples.moe_engine.model.ResidualAddNorm.forward": [
        "hidden = self.finish_deferred_reduction(hidden)",
        "residual = hidden + residual",
    ],
}


def _function(target: str):
    module_name, class_name, method = target.rsplit(".", 2)
    return getattr(getattr(importlib.import_module(module_name), class_name), method)


@pytest.mark.parametrize("target", sorted(ANCHORS))
def test_each_anchor_is_one_line_found_once(target):
    # NOTE: a trailing comment (e.g. a linter's noqa on a local kept for a patch) is not part
    # of what the preset's dumps rely on: the line's statement.
    lines = [line.split("  #", 1)[0].strip() for line in inspect.getsource(_function(target)).splitlines()]
    for anchor in ANCHORS[target]:
        assert lines.count(anchor) == 1, f"{target}: {anchor!r} found {lines.count(anchor)} times"


def test_anchors_are_documented():
    doc = (ENGINE_DIR.parents[1] / "docs" / "example-engine.md").read_text(encoding="utf-8")
    for target, anchors in ANCHORS.items():
        assert target.split(".", 2)[2] in doc, target
        for anchor in anchors:
            assert anchor in doc, f"docs/example-engine.md does not list {anchor!r} of {target}"


def test_the_engine_has_no_dump_calls():
    """Its dumps come from patches; only set_parallel registers the layout."""
    for path in sorted(ENGINE_DIR.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        assert "dumper.dump(" not in source and "dumper.step(" not in source, path.name


def test_example_preset_matches_the_engine_source():
    """``dumpcmp patch check`` on the example preset: every target and anchor exists."""
    from patches.check import check_patch_file

    for path in sorted((ENGINE_DIR.parents[1] / "patches" / "presets" / "example").glob("*.yaml")):
        result = check_patch_file(path)
        assert result, "\n".join(result.problems)
