"""Name maps whose baseline names carry a target tag: ``moe_output`` -> ``model.layers.{layer}.mlp.output``."""

from __future__ import annotations

import torch

from comparator import compare
from comparator.options import load_name_map


def test_tag_fields_are_filled_from_the_target_tags(tmp_path):
    path = tmp_path / "names.yaml"
    path.write_text(
        "names:\n  moe_output: 'model.layers.{layer}.mlp.output'\n  odd: 'x.{missing}.{layer}'\n"
        "patterns:\n  - {target: '^attn_(.*)$', baseline: 'model.layers.{layer}.self_attn.\\1'}\n"
    )
    name_map = load_name_map(path)
    assert name_map.baseline_name("moe_output", {"layer": 3}) == "model.layers.3.mlp.output"
    assert name_map.baseline_name("attn_output", {"layer": 0}) == "model.layers.0.self_attn.output"
    assert name_map.baseline_name("odd", {"layer": 1}) == "x.{missing}.1"  # an absent tag stays as written
    assert name_map.baseline_name("moe_output") == "model.layers.{layer}.mlp.output"
    assert name_map.baseline_name("unmapped_{layer}", {"layer": 1}) == "unmapped_{layer}"


def test_a_baseline_named_by_module_path_pairs_with_a_tagged_target(tmp_path):
    from dumper.api import Dumper

    values = {layer: torch.randn(3, 4, generator=torch.Generator().manual_seed(layer)) for layer in range(2)}
    for run, name_of in (("hooks", "model.layers.{}.mlp.output"), ("preset", "moe_output")):
        dumper = Dumper()
        dumper.configure(dir=str(tmp_path / run))
        for layer, value in values.items():
            dumper.dump(name_of.format(layer), value, dims="t h", layer=layer)
        dumper.close()
    names = tmp_path / "names.yaml"
    names.write_text("names:\n  moe_output: 'model.layers.{layer}.mlp.output'\n")
    report = compare(tmp_path / "hooks", tmp_path / "preset", name_map=names)
    assert report.exit_code == 0
    assert [(r.name, r.status, r.baseline.name) for r in report.results] == [
        ("moe_output", "pass", "model.layers.0.mlp.output"), ("moe_output", "pass", "model.layers.1.mlp.output"),
    ]
