"""Step time of a Qwen3-MoE-shaped transformers model while dumping, vs not dumping.

Random weights (no hub), bf16. Each step dumps every layer's attention output, MLP
(MoE block) output and layer output through forward hooks: 3 x layers tensors. In one
run, interleaved, it times bursts of ``--steps`` steps:

- plain: hooks attached, dumping off (the undumped step time);
- dumpcmp: the dumper on, queue large enough for the burst, host buffers warm
  (the state of an engine after its first dumped steps) and cold (first burst);
- bare: each hook does ``t.to("cpu", non_blocking=True)`` and nothing else;
- torch.save: each hook does ``torch.save(t.cpu(), path)`` (SGLang's dumper, inline);

rounds of plain / dumpcmp / bare bursts, one after the other, ratios taken within each
round (median and spread over ``--repeats`` rounds, after a cold round); then
sustained dumping, ``--sustained-steps`` steps through a 1 GB queue, until the
writer is done, vs one plain file write of the same bytes.

    python benchmarks/bench_model.py --device cuda                     # 8 layers, hidden 2048, 32 experts
    python benchmarks/bench_model.py --device cpu --layers 2 --hidden 256 --experts 4 --tokens 64 --dtype float32
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from dumper.api import Dumper


def build_model(args):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        moe_intermediate_size=args.expert_intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 8),
        head_dim=args.hidden // args.heads,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        max_position_embeddings=max(4096, args.tokens),
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = Qwen3MoeForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.train(False)  # inference mode (nn.Module), not Python eval
    params = sum(p.numel() for p in model.parameters())
    return model, params


def first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"unexpected module output {type(value).__name__}")


class Hooks:
    """Per layer: self_attn, mlp and the layer itself; ``sink(name, tensor)`` decides what happens."""

    def __init__(self, model) -> None:
        self.sink = None
        self.handles = []
        for index, layer in enumerate(model.model.layers):
            for name, module in (("attn_output", layer.self_attn), ("mlp_output", layer.mlp), ("layer_output", layer)):
                self.handles.append(module.register_forward_hook(self._hook(f"layers.{index}.{name}")))

    def _hook(self, name):
        def hook(module, args, output):
            if self.sink is not None:
                self.sink(name, first_tensor(output))
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def burst_seconds_per_step(model, input_ids, steps: int, device: str, on_step=None) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
            if on_step is not None:
                on_step()
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--expert-intermediate", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=10, help="steps per burst")
    parser.add_argument("--repeats", type=int, default=11, help="measured rounds (after a cold one)")
    parser.add_argument("--sustained-steps", type=int, default=40)
    parser.add_argument("--digest-workers", type=int, default=0, help="dumper.writer.DIGEST_WORKERS")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    import dumper.writer

    dumper.writer.DIGEST_WORKERS = args.digest_workers

    work_dir = args.dir or tempfile.mkdtemp(prefix="dumpcmp-model-")
    os.makedirs(work_dir, exist_ok=True)
    model, params = build_model(args)
    hooks = Hooks(model)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=generator).to(args.device)
    med = statistics.median

    # Bytes a step dumps, from one probe step.
    sizes = []
    hooks.sink = lambda name, t: sizes.append(t.numel() * t.element_size())
    burst_seconds_per_step(model, input_ids, 1, args.device)
    step_mb = sum(sizes) / (1 << 20)
    tensors_per_step = len(sizes)
    hooks.sink = None
    burst_seconds_per_step(model, input_ids, 3, args.device)  # warm-up: kernels, allocator

    burst_mb = step_mb * args.steps
    dumper = Dumper()
    run_dir = os.path.join(work_dir, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    dumper.configure(dir=run_dir, run_id="bench-model", queue_bytes=int((burst_mb * 1.5 + 64) * (1 << 20)))

    def dump_sink(name, tensor):
        dumper.dump(name, tensor)

    kept = []

    def bare_sink(name, tensor):
        kept.append(tensor.to("cpu", non_blocking=True))

    save_dir = os.path.join(work_dir, "torch_save")
    os.makedirs(save_dir, exist_ok=True)
    counter = [0]

    def save_sink(name, tensor):
        counter[0] += 1
        torch.save(tensor.cpu(), os.path.join(save_dir, f"{counter[0]}___{name}.pt"))

    results: dict[str, list[float]] = {key: [] for key in ("plain", "dumpcmp warm", "bare", "torch.save")}
    cold = None
    # Round 0 is the cold one (the dumper pins its buffers); every later round is a
    # plain / dumpcmp / bare triple whose ratios are taken within the round.
    for repeat in range(args.repeats + 1):
        hooks.sink = None
        results["plain"].append(burst_seconds_per_step(model, input_ids, args.steps, args.device))
        hooks.sink = dump_sink
        seconds = burst_seconds_per_step(model, input_ids, args.steps, args.device, on_step=dumper.step)
        if repeat == 0:
            cold = seconds  # first burst: pinned buffers allocated as it goes
            results["plain"].pop()
        else:
            results["dumpcmp warm"].append(seconds)
        hooks.sink = None
        dumper.flush()  # the writer drains between bursts (not timed)
        hooks.sink = bare_sink
        bare_seconds = burst_seconds_per_step(model, input_ids, args.steps, args.device, on_step=kept.clear)
        if repeat:
            results["bare"].append(bare_seconds)
        if repeat == 0:
            hooks.sink = save_sink
            results["torch.save"].append(burst_seconds_per_step(model, input_ids, 2, args.device))
            shutil.rmtree(save_dir, ignore_errors=True)
            os.makedirs(save_dir)
    hooks.sink = None
    dumper.close()
    written_mb = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(run_dir) for f in fs) / (1 << 20)
    shutil.rmtree(run_dir, ignore_errors=True)

    # Sustained: more than the queue holds; the engine waits only when it is full.
    sustained = Dumper()
    sustained.configure(dir=run_dir, run_id="bench-sustained", queue_bytes=1 << 30)
    hooks.sink = lambda name, tensor: sustained.dump(name, tensor)
    sync(args.device)
    start = time.perf_counter()
    engine_step = burst_seconds_per_step(model, input_ids, args.sustained_steps, args.device, on_step=sustained.step)
    sustained.close()
    sustained_seconds = time.perf_counter() - start
    hooks.sink = None
    sustained_mb = step_mb * args.sustained_steps
    shutil.rmtree(run_dir, ignore_errors=True)
    host = torch.empty(int(step_mb * (1 << 20)), dtype=torch.uint8).random_()
    path = os.path.join(work_dir, "plain.bin")
    start = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(args.sustained_steps):
            handle.write(memoryview(host.numpy()))
    plain_seconds = time.perf_counter() - start
    os.unlink(path)

    plain = med(results["plain"])
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"# model benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores{gpu}, "
          f"torch {torch.__version__}, digest workers {args.digest_workers}, {args.device}, {args.dtype}")
    print(f"# Qwen3-MoE-shaped: {args.layers} layers, hidden {args.hidden}, {args.experts} experts top-{args.top_k}, "
          f"{params / 1e9:.2f} B params, {args.batch} x {args.tokens} tokens; {tensors_per_step} tensors "
          f"({step_mb:.0f} MB) dumped a step; bursts of {args.steps} steps, median of {args.repeats} "
          f"rounds after a cold one; {written_mb:.0f} MB written by the bursts")
    print()
    print("| step time | ms | vs plain |")
    print("|---|---|---|")
    print(f"| plain (hooks, dumping off) | {plain * 1e3:.1f} | 1.00x |")
    for key in ("dumpcmp warm", "bare", "torch.save"):
        if results[key]:
            value = med(results[key])
            print(f"| {key} | {value * 1e3:.1f} | {value / plain:.2f}x |")
    print(f"| dumpcmp cold (first burst) | {cold * 1e3:.1f} | {cold / plain:.2f}x |")
    print(f"| dumpcmp sustained ({args.sustained_steps} steps, 1 GB queue), engine | {engine_step * 1e3:.1f} | "
          f"{engine_step / plain:.2f}x |")
    print()
    for key in ("dumpcmp warm", "bare"):
        ratios = sorted(value / plain_value for value, plain_value in zip(results[key], results["plain"]))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(f"{key} / plain, within each round: median {med(ratios):.3f}x (p25 {quartiles[0]:.3f}, "
              f"p75 {quartiles[2]:.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}) over {len(ratios)} rounds")
    if results["dumpcmp warm"] and results["bare"]:
        within = [d / b for d, b in zip(results["dumpcmp warm"], results["bare"])]
        print(f"dumpcmp warm vs bare pinned copies, within each round: median {med(within):.3f}x")
    print(f"sustained capture: {sustained_mb / sustained_seconds:.0f} MB/s until the writer is done; "
          f"one plain file write of the same bytes {sustained_mb / plain_seconds:.0f} MB/s; "
          f"ratio {plain_seconds / sustained_seconds:.2f}")
    if args.dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
