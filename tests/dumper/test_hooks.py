from __future__ import annotations

import pytest
import torch
from torch import nn

from dumper.api import Dumper
from dumper.hooks import capture_modules
from dumper.reader import open_run


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        return self.mlp(self.attn(x)) + x


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x), x


def test_hooks_dump_matching_modules_and_are_removed(tmp_path):
    torch.manual_seed(0)
    model = Model()
    local = Dumper()
    local.configure(dir=str(tmp_path / "run"), run_id="hooks")
    x = torch.randn(5, 8)
    with capture_modules(model, include=r"layers\.\d+\.mlp$|^head$", inputs=True, target=local,
                         dims={r"mlp$": "t h"}) as names:
        assert names == ["layers.0.mlp", "layers.1.mlp", "head"]
        reference, _ = model(x)
    local.close()
    assert all(not m._forward_hooks for m in model.modules())
    with open_run(tmp_path / "run") as run:
        by_name = {(r.name, r.tags.get("layer")): r for r in run.records}
        assert set(by_name) == {
            ("layers.0.mlp.input.0", 0), ("layers.0.mlp.output", 0),
            ("layers.1.mlp.input.0", 1), ("layers.1.mlp.output", 1),
            ("head.input.0", None), ("head.output", None),
        }
        assert by_name[("layers.0.mlp.output", 0)].dims == "t h"
        assert torch.equal(run.load(by_name[("head.output", None)]), reference)


def test_hooks_removed_on_exception(tmp_path):
    model = Model()
    local = Dumper()
    with pytest.raises(RuntimeError):
        with capture_modules(model, target=local):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
