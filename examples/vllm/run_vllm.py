"""Greedy generation with vLLM on the tiny model, for dumping under ``dumpcmp run``.

    dumpcmp run --patch vllm/qwen3_moe --dir /tmp/runs/tp1 -- \
        python -m examples.vllm.run_vllm /tmp/tiny-qwen3-moe --tp 1

Prompts are token ids (the model has no tokenizer). vLLM starts its engine core and
workers as spawned processes, which re-import this file: the ``__main__`` guard keeps
them from starting vLLM again. Eager mode by default; ``--compile`` runs vLLM's
default compilation, whose graphs hold the dump calls as operators (docs/graphs.md).
"""

from __future__ import annotations

import argparse
import json

# Two prompts of different lengths. They run one after the other (max_num_seqs=1):
# vLLM's engine core may start the first forward before the second request arrives,
# so a batch of both would differ from run to run (and from transformers' layout).
PROMPTS = ([11, 42, 7, 99, 3, 250, 18], [5, 77, 130, 64, 9])
# --prompts N > 2 adds these, in order.
MORE_PROMPTS = ([200, 17, 33, 8], [61, 2, 145, 90, 12, 7], [3, 181, 44])
MAX_TOKENS = 4
KV_CACHE_BYTES = 64 * 1024 * 1024


def generate(model: str, *, tensor_parallel_size: int = 1, max_tokens: int = MAX_TOKENS,
             compile: bool = False, dtype: str = "float32", prompts: int = len(PROMPTS),
             disabled_custom_ops: tuple[str, ...] = (), max_num_seqs: int = 1,
             max_num_batched_tokens: int | None = None) -> list[list[int]]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    options = {}
    if disabled_custom_ops:
        # --disable-custom-op NAME: vLLM runs NAME's PyTorch code (forward_native) instead
        # of its CPU kernel; DeepSeek-V2's MLA needs it for rotary_embedding (README, section 6).
        options["compilation_config"] = {"custom_ops": [f"-{name}" for name in disabled_custom_ops]}
    if max_num_batched_tokens:
        # Small: prompts are prefilled in chunks of at most this many tokens per step.
        options["max_num_batched_tokens"] = max_num_batched_tokens
    llm = LLM(
        model=model,
        skip_tokenizer_init=True,
        dtype=dtype,
        # --compile: vLLM's default compilation (on the CPU: the model under
        # torch.compile(fullgraph=True), inductor); the dump calls become graph operators.
        enforce_eager=not compile,
        max_model_len=128,
        tensor_parallel_size=tensor_parallel_size,
        seed=0,
        # 1 (the default here): one request at a time, the same steps in every run.
        # More: vLLM batches requests as they arrive, so runs differ in their steps and
        # --aligner auto matches tokens by request (docs/aligners.md).
        max_num_seqs=max_num_seqs,
        # NOTE: an explicit KV-cache size skips vLLM's CPU check that a fraction of
        # the machine's memory is free (it fails on a busy shared machine).
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        **options,
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, detokenize=False)
    chosen = (PROMPTS + MORE_PROMPTS)[:prompts]
    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in chosen], params)
    return [list(output.outputs[0].token_ids) for output in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="directory written by examples.vllm.make_model")
    parser.add_argument("--tp", type=int, default=1, help="tensor_parallel_size")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--compile", action="store_true",
                        help="vLLM's default compilation instead of eager mode (docs/graphs.md)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--prompts", type=int, choices=range(1, len(PROMPTS) + len(MORE_PROMPTS) + 1),
                        default=len(PROMPTS), metavar="N", help="how many prompts (at most 5)")
    parser.add_argument("--disable-custom-op", action="append", default=[], metavar="NAME",
                        help="run vLLM's PyTorch code for this custom op instead of its kernel (repeatable), "
                             "e.g. rotary_embedding for DeepSeek-V2's MLA on the CPU")
    parser.add_argument("--max-num-seqs", type=int, default=1,
                        help="requests batched per step (1: one after another)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None,
                        help="tokens per step (small: chunked prefill)")
    args = parser.parse_args()
    tokens = generate(args.model, tensor_parallel_size=args.tp, max_tokens=args.max_tokens, compile=args.compile,
                      dtype=args.dtype, prompts=args.prompts, disabled_custom_ops=tuple(args.disable_custom_op),
                      max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)
    print("GENERATED " + json.dumps(tokens))


if __name__ == "__main__":
    main()
