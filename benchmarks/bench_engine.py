"""The example engine's step time with the preset's patches applied but dumping off,
vs no patches, in one process (target: within 1%).

Alternates A/B blocks: in each block a fresh engine (one rank) runs ``generate()``
(prefill + ``--steps`` decode steps) with the patches installed or removed; the
ratio is the median over blocks of patched / unpatched step time.

    python benchmarks/bench_engine.py --device cuda [--blocks 30] [--steps 32] [--layers 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "patches", "presets", "example", "moe_engine.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    for key in [k for k in os.environ if k.startswith("DUMPCMP_")]:
        del os.environ[key]  # dumping off

    import torch

    from dumper import dumper
    from examples.moe_engine.config import EngineConfig, ModelConfig
    from examples.moe_engine.launch import open_worker
    from patches.apply import apply_patches

    assert not dumper.enabled
    config = EngineConfig(device=args.device, steps=args.steps,
                          model=dataclasses.replace(ModelConfig(), num_layers=args.layers))
    patcher = apply_patches([PRESET])

    def one_block() -> float:
        with open_worker(config, rank=0, local_rank=0) as engine:
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            engine.generate()  # ends in .cpu() of the logits: synchronised
            return (time.perf_counter() - start) / (args.steps + 1)

    for _ in range(3):  # warm-up, both ways
        one_block()
        with patcher:
            one_block()
    plain, patched, ratios = [], [], []
    for block in range(args.blocks):
        # Alternate which goes first, so drifts hit both sides alike.
        if block % 2:
            with patcher:
                b = one_block()
            a = one_block()
        else:
            a = one_block()
            with patcher:
                b = one_block()
        plain.append(a)
        patched.append(b)
        ratios.append(b / a)
    with patcher:
        applied = len(set(patcher.applied))
    med = statistics.median
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"# engine benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores{gpu}, "
          f"torch {torch.__version__}, {args.device}")
    print(f"# example engine, 1 rank, {args.layers} layers, prefill + {args.steps} decode steps per block, "
          f"{args.blocks} A/B blocks; {applied} functions patched by {os.path.relpath(PRESET)}")
    print()
    print("| | step time (median) | ratio |")
    print("|---|---|---|")
    print(f"| no patches | {med(plain) * 1e3:.3f} ms | 1.000 |")
    print(f"| patches applied, dumping off | {med(patched) * 1e3:.3f} ms | {med(ratios):.4f} "
          f"(blocks: p25 {statistics.quantiles(ratios, n=4)[0]:.4f}, p75 {statistics.quantiles(ratios, n=4)[2]:.4f}) |")


if __name__ == "__main__":
    main()
