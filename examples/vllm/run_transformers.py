"""The transformers reference for the vLLM recipe: the same model, prompts and greedy tokens.

    # with the transformers preset (dump points named as vLLM's preset names them)
    dumpcmp run --patch transformers/qwen3_moe --dir /tmp/runs/hf -- \
        python -m examples.vllm.run_transformers /tmp/tiny-qwen3-moe
    # with forward hooks only (no patch file: module outputs named by module path)
    dumpcmp run --dir /tmp/runs/hf-hooks -- \
        python -m examples.vllm.run_transformers /tmp/tiny-qwen3-moe --hooks

``--compile`` runs each decoder layer under ``torch.compile(fullgraph=True)`` (inductor),
the preset's dump calls becoming graph operators (docs/graphs.md).

One process, float32, SDPA attention (no attention weights among the outputs). Each prompt is generated on its own (batch 1),
prefill then one decode step per new token: the same forward passes, in the same
order, as ``run_vllm`` makes with ``max_num_seqs=1``, so step N of both runs holds
the same tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Iterator

from examples.vllm.run_vllm import MAX_TOKENS, PROMPTS

# Module paths whose outputs the hooks mode dumps (the decoder layers and their parts).
HOOKED_MODULES = r"^model\.layers\.\d+(\.self_attn|\.mlp|\.mlp\.gate|\.mlp\.experts)?$"
# Hooked outputs carry a batch dim of 1 ([1, tokens, hidden]) except inside the MoE
# block, which works on [tokens, hidden]; "1" names a dim of size 1 that the
# comparator drops before comparing (SGLang's squeeze dim).
HOOKED_DIMS = {r"\.mlp\.gate$": "t e", r"\.mlp\.experts$": "t h", r".*": "1 t h"}


def generate(model_dir: str, *, hooks: bool = False, max_tokens: int = MAX_TOKENS, compile: bool = False
             ) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    from dumper import dumper

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").train(False)
    if compile:
        # NOTE: the layers, not generate(): its cache bookkeeping breaks a full graph.
        for layer in model.model.layers:
            layer.compile(fullgraph=True, dynamic=True)
    generated = []
    with torch.no_grad(), _hook_mode(model, dumper, enabled=hooks):
        for prompt in PROMPTS:
            output = model.generate(torch.tensor([list(prompt)]), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                    do_sample=False, pad_token_id=0)
            generated.append(output[0, len(prompt):].tolist())
    return generated


@contextlib.contextmanager
def _hook_mode(model, dumper, *, enabled: bool) -> Iterator[None]:
    """Forward hooks on the decoder layers, and a step per forward of the whole model."""
    if not enabled:
        yield
        return
    from dumper.hooks import capture_modules

    def end_of_forward(*_: object) -> None:  # a hook that returns something replaces the output
        dumper.step()

    step_handle = model.register_forward_hook(end_of_forward)
    try:
        with capture_modules(model, include=HOOKED_MODULES, dims=HOOKED_DIMS):
            yield
    finally:
        step_handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="directory written by examples.vllm.make_model")
    parser.add_argument("--hooks", action="store_true", help="dump module outputs with forward hooks")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--compile", action="store_true",
                        help="run each decoder layer under torch.compile(fullgraph=True) (docs/graphs.md)")
    args = parser.parse_args()
    print("GENERATED " + json.dumps(generate(args.model, hooks=args.hooks, max_tokens=args.max_tokens,
                                             compile=args.compile)))
    if args.compile:
        from torch._dynamo.utils import counters

        # What dynamo made of the layers: graphs compiled, and graph breaks (none expected).
        print("COMPILED " + json.dumps({"graphs": counters["stats"]["unique_graphs"],
                                        "graph_breaks": sum(counters["graph_break"].values())}))


if __name__ == "__main__":
    main()
