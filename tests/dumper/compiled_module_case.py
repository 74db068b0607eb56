"""A bf16 MoE-like module with dumps, run eagerly or as torch.compile(module, fullgraph=True) (tests only).

    python -m tests.dumper.compiled_module_case eager|compiled   (with DUMPCMP_DIR set)

Unlike compiled_case.py: an nn.Module compiled whole, bf16 weights with float32 router
logits (an upcast inductor computes at float32), integer top-k ids, a bool mask, a
transposed view and a slice, a 0-dim tensor, under inference_mode, and no
``mark_dynamic``: the second token count makes dynamo recompile with a dynamic size.
Prints one JSON line: the outputs' sums per step.
"""

from __future__ import annotations

import json
import sys

import torch

from dumper import dumper

TOKENS_PER_STEP = (4, 9, 1, 6, 13)
HIDDEN, EXPERTS = 16, 4


class Block(torch.nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.proj = torch.nn.Linear(HIDDEN, HIDDEN, dtype=torch.bfloat16)
        self.gate = torch.nn.Linear(HIDDEN, EXPERTS, dtype=torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with dumper.tags(layer=self.index, kind="moe"):
            hidden = self.proj(x)
            dumper.dump("hidden_t", hidden.t(), dims="h t")
            dumper.dump("hidden_half", hidden[:, : HIDDEN // 2], dims="t h")
            logits = self.gate(hidden).float()
            dumper.dump("router_logits", logits, dims="t e")
            dumper.dump("topk_ids", logits.topk(2, dim=-1).indices, dims="t k")
            dumper.dump("positive", logits > 0, dims="t e")
            dumper.dump("logit_sum", logits.sum())
            return x + hidden


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(index) for index in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dumper.dump("input", x, dims="t h")
        for block in self.blocks:
            x = block(x)
        dumper.dump("output", x, dims="t h")
        return x


def main(mode: str) -> None:
    torch.manual_seed(0)
    model = Model()
    function = torch.compile(model, fullgraph=True) if mode == "compiled" else model
    sums = []
    with torch.inference_mode():
        for step, tokens in enumerate(TOKENS_PER_STEP):
            x = torch.randn(tokens, HIDDEN, generator=torch.Generator().manual_seed(step)).to(torch.bfloat16)
            sums.append(float(function(x).double().sum()))
            dumper.step()
    print(json.dumps({"sums": sums}))


if __name__ == "__main__":
    main(sys.argv[1])
