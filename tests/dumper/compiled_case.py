"""A small two-layer function with dump sites, run eagerly or under ``torch.compile`` (tests only).

    python -m tests.dumper.compiled_case eager|compiled   (with DUMPCMP_DIR set)

Prints one JSON line: the outputs' checksum per step, and in compiled mode the number
of ``torch.ops.dumpcmp`` calls in the code inductor generated for the first call.
"""

from __future__ import annotations

import json
import sys

import torch

from dumper import dumper

# Token counts change from step to step: the compiled graph must be dynamic in them.
TOKENS_PER_STEP = (3, 5, 2, 7)
HIDDEN = 8


def layer(x: torch.Tensor, weight: torch.Tensor, layer_id: int) -> torch.Tensor:
    with dumper.tags(layer=layer_id):
        hidden = x @ weight
        dumper.dump("hidden", hidden, dims="t h")
        dumper.dump("gates", (hidden.sigmoid(), None, hidden.relu()), dims="t h")
        dumper.dump("num_tokens", x.shape[0])
        # An in-place write after the dump: the record must hold the value before it.
        hidden.mul_(0.5)
        hidden = hidden + x
    return hidden


def model(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    for layer_id in range(weights.shape[0]):
        x = layer(x, weights[layer_id], layer_id)
    dumper.dump("output", x, dims="t h", kind="final")
    return x


def inputs(step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(TOKENS_PER_STEP[step], HIDDEN, generator=generator)


class EngineState:
    """Not a tensor: a dump of it is reported, not recorded."""


STATE = EngineState()


def with_bad_sites(x: torch.Tensor) -> torch.Tensor:
    hidden = x * 2
    dumper.dump("lazy", lambda: hidden + 1)
    dumper.dump("state", STATE)
    dumper.dump("hidden", hidden)
    return hidden + 1


def off_then_on() -> dict[str, object]:
    """Compile with dumping off, then turn it on: dynamo's guard on ``enabled`` recompiles."""
    from torch._inductor.utils import run_and_get_code

    function = torch.compile(model, fullgraph=True)
    weights = torch.ones(2, HIDDEN, HIDDEN) / HIDDEN
    codes_off = run_and_get_code(function, inputs(0), weights)[1]
    dumper.step()
    dumper.enable()
    codes_on = run_and_get_code(function, inputs(1), weights)[1]
    return {"off": sum(code.count("dumpcmp") for code in codes_off),
            "on": sum(code.count("torch.ops.dumpcmp.dump.default(") for code in codes_on)}


def bad_sites() -> dict[str, object]:
    function = torch.compile(with_bad_sites, fullgraph=True)
    outputs_match = []
    for step in range(3):
        outputs_match.append(bool(torch.equal(function(inputs(step)), inputs(step) * 2 + 1)))
        dumper.step()
    return {"outputs_match": outputs_match}


def paused_warmup() -> dict[str, object]:
    """An engine's warm-up traces the model under dumper.paused(): the code keeps its dumps, the warm-up records none."""
    from torch._inductor.utils import run_and_get_code

    function = torch.compile(model, fullgraph=True, dynamic=True)
    weights = torch.ones(2, HIDDEN, HIDDEN) / HIDDEN
    with dumper.paused():
        codes = run_and_get_code(function, inputs(0), weights)[1]
    for step in (1, 2):
        dumper.set_step(step)
        function(inputs(step), weights)
    return {"dump_ops_in_code": sum(code.count("torch.ops.dumpcmp.dump.default(") for code in codes)}


def main(mode: str) -> None:
    if mode == "paused_warmup":
        print(json.dumps(paused_warmup()))
        return
    if mode == "off_then_on":
        print(json.dumps(off_then_on()))
        return
    if mode == "bad_sites":
        print(json.dumps(bad_sites()))
        return
    weights = torch.randn(2, HIDDEN, HIDDEN, generator=torch.Generator().manual_seed(0)) / HIDDEN**0.5
    function = torch.compile(model, fullgraph=True, backend="inductor") if mode == "compiled" else model
    result: dict[str, object] = {"sums": []}
    for step in range(len(TOKENS_PER_STEP)):
        x = inputs(step)
        if mode == "compiled" and step == 0:
            torch._dynamo.mark_dynamic(x, 0)
            from torch._inductor.utils import run_and_get_code

            with dumper.tags(request="r0"):
                out, codes = run_and_get_code(function, x, weights)
            result["dump_ops_in_code"] = sum(code.count("torch.ops.dumpcmp.dump.default(") for code in codes)
            result["tag_ops_in_code"] = sum(code.count("torch.ops.dumpcmp.push_tags.default(") for code in codes)
            # The layer tag of the traced `with dumper.tags(...)` is a constant of each dump in it.
            result["layer_tagged_dumps"] = sum(code.count("'layer=i:") for code in codes) - result["tag_ops_in_code"]
        else:
            # Sticky tags set outside the compiled region reach the records too.
            with dumper.tags(request="r0"):
                out = function(x, weights)
        result["sums"].append(float(out.double().sum()))
        dumper.step()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
