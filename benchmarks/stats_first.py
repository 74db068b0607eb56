"""The stats-first workflow for big runs (docs/scale.md), measured on a synthetic many-rank run.

    python benchmarks/stats_first.py --dir /tmp/sf --tp 8 --ep 8 [--layers 8] [--bug-layer 5] [--full]

Every rank is written through the real dumper (``dumper.Dumper``, one per rank, in this
process: the ranks of a 64-rank run written one after another), with the logical
tensors of a small MoE decoder sharded as an engine holds them: ``attn.qkv`` and
``mlp.dense`` split over tp, ``moe.expert_out`` a partial sum over ep, the rest
replicated. The target doubles the experts' output from ``--bug-layer`` on (a
duplicated EP reduction); the baseline is one rank. The steps a user takes:

1. a stats-mode run of every rank, and of the baseline;
2. ``dumpcmp compare`` of the stats: the first divergent tensor names the region;
3. a tensor-mode run of that region only (``DUMPCMP_FILTER``: its layer), both sides;
4. ``dumpcmp compare`` of the tensors: the first divergent tensor, with its hint.

Printed: the bytes on disk and the wall time of each step (``--full``: also of a
tensor-mode run of everything, what the workflow avoids). ``run_workflow`` is what
tests/comparator/test_stats_first.py calls at a small size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from dumper.api import Dumper
from dumper.filters import parse_filter

DUMPCMP = [sys.executable, "-c", "from comparator.cli import main; main()"]


@dataclass(frozen=True)
class Model:
    layers: int = 8
    steps: int = 2
    tokens: int = 32
    hidden: int = 256
    experts: int = 64
    ffn: int = 512
    bug_layer: int | None = None


@dataclass(frozen=True)
class Layout:
    tp: int
    ep: int

    @property
    def world_size(self) -> int:
        return self.tp * self.ep

    def ranks(self, rank: int) -> tuple[int, int]:
        return rank % self.tp, rank // self.tp  # tp innermost


@dataclass
class Step:
    name: str
    seconds: float
    nbytes: int
    detail: dict[str, Any] = field(default_factory=dict)


def _logical(model: Model, step: int, *, buggy: bool):
    """Per layer, the logical tensors of one step (deterministic in the step)."""
    generator = torch.Generator().manual_seed(1000 + step)
    weights = torch.Generator().manual_seed(7)
    scale = model.hidden ** -0.5
    w_qkv = torch.randn(model.hidden, model.hidden, generator=weights) * scale
    w_router = torch.randn(model.hidden, model.experts, generator=weights) * scale
    w_expert = torch.randn(model.hidden, model.hidden, generator=weights) * scale
    w_dense = torch.randn(model.hidden, model.ffn, generator=weights) * scale
    h = torch.randn(model.tokens, model.hidden, generator=generator)
    for layer in range(model.layers):
        qkv = h @ w_qkv
        attn = torch.tanh(qkv)
        router = h @ w_router
        expert = torch.tanh(h @ w_expert)
        if buggy and model.bug_layer is not None and layer >= model.bug_layer:
            expert = 2 * expert
        dense = torch.relu(h @ w_dense)
        out = h + attn + expert
        yield layer, {"attn.qkv": qkv, "attn.out": attn, "moe.router": router, "moe.expert_out": expert,
                      "mlp.dense": dense, "layer.out": out}
        h = out / out.norm(dim=-1, keepdim=True) * model.hidden ** 0.5


# name -> dims, the same text in every run (one patch file annotates both, as a preset does)
DIMS = {
    "attn.qkv": "t h[tp] # ep:replicated",
    "attn.out": "t h # tp:replicated ep:replicated",
    "moe.router": "t e # tp:replicated ep:replicated",
    "moe.expert_out": "t h[ep:partial] # tp:replicated",
    "mlp.dense": "t f[tp] # ep:replicated",
    "layer.out": "t h # tp:replicated ep:replicated",
}


def _shard(name: str, tensor: torch.Tensor, layout: Layout, rank: int) -> torch.Tensor:
    tp_rank, ep_rank = layout.ranks(rank)
    if name in ("attn.qkv", "mlp.dense"):
        return tensor.chunk(layout.tp, dim=1)[tp_rank].contiguous()
    if name == "moe.expert_out":
        # Each EP rank's experts give a share of the sum (unequal, as real routing does).
        shares = torch.arange(1, layout.ep + 1, dtype=tensor.dtype)
        return tensor * (shares[ep_rank] / shares.sum())
    return tensor


def write_run(path: str, layout: Layout, model: Model, *, mode: str, buggy: bool, filter_text: str | None = None,
              run_id: str) -> int:
    """Every rank of one run through the real dumper; returns the records written."""
    records = 0
    logical = {step: list(_logical(model, step, buggy=buggy)) for step in range(model.steps)}
    for rank in range(layout.world_size):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(layout.world_size))
        dumper = Dumper()
        config: dict[str, Any] = dict(dir=path, mode=mode, collectives=False, run_id=run_id)
        if filter_text:
            config["filter"] = parse_filter(filter_text)
        dumper.configure(**config)
        tp_rank, ep_rank = layout.ranks(rank)
        dumper.set_parallel(tp=(tp_rank, layout.tp), ep=(ep_rank, layout.ep))
        for step in range(model.steps):
            dumper.set_step(step)
            for layer, tensors in logical[step]:
                for name, tensor in tensors.items():
                    dumper.dump(name, _shard(name, tensor, layout, rank), dims=DIMS[name], layer=layer)
        dumper.close()
        with open(os.path.join(dumper.rank_dir or "", "rank.json"), encoding="utf-8") as handle:
            records += int(json.load(handle).get("records", 0))
    for var in ("RANK", "WORLD_SIZE"):
        os.environ.pop(var, None)
    return records


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def compare(baseline: str, target: str, report: str) -> tuple[float, dict[str, Any], int]:
    start = time.perf_counter()
    proc = subprocess.run([*DUMPCMP, "compare", baseline, target, "--format", "json", "--output", report],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"compare failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with open(report, encoding="utf-8") as handle:
        return seconds, json.load(handle), proc.returncode


def _timed_write(name: str, path: str, layout: Layout, model: Model, **options: Any) -> Step:
    start = time.perf_counter()
    records = write_run(path, layout, model, **options)
    return Step(name, time.perf_counter() - start, du(path), {"records": records, "ranks": layout.world_size})


def run_workflow(root: str, layout: Layout, model: Model, *, full: bool = False) -> list[Step]:
    """The four steps (and, with ``full``, the tensor run of everything); see the module docstring."""
    base = Layout(1, 1)
    steps = [
        _timed_write("stats run, target", f"{root}/stats/target", layout, model, mode="stats", buggy=True,
                     run_id="stats-target"),
        _timed_write("stats run, baseline", f"{root}/stats/baseline", base, model, mode="stats", buggy=False,
                     run_id="stats-base"),
    ]
    seconds, report, code = compare(f"{root}/stats/baseline", f"{root}/stats/target", f"{root}/stats.json")
    first = report["first_divergence"]
    steps.append(Step("compare stats", seconds, 0, {"exit": code, "first": first}))
    if first is None:
        return steps
    region = f"layer={first['tags']['layer']}"
    steps += [
        _timed_write(f"tensor run of {region}, target", f"{root}/region/target", layout, model, mode="tensor",
                     buggy=True, filter_text=region, run_id="region-target"),
        _timed_write(f"tensor run of {region}, baseline", f"{root}/region/baseline", base, model, mode="tensor",
                     buggy=False, filter_text=region, run_id="region-base"),
    ]
    seconds, report, code = compare(f"{root}/region/baseline", f"{root}/region/target", f"{root}/region.json")
    steps.append(Step("compare tensors", seconds, 0, {"exit": code, "first": report["first_divergence"]}))
    if full:
        steps.append(_timed_write("(tensor run of everything, target)", f"{root}/full/target", layout, model,
                                  mode="tensor", buggy=True, run_id="full-target"))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--tp", type=int, default=8)
    parser.add_argument("--ep", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--bug-layer", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="also write a tensor-mode run of everything")
    args = parser.parse_args()
    model = Model(layers=args.layers, steps=args.steps, tokens=args.tokens, hidden=args.hidden,
                  bug_layer=args.bug_layer)
    layout = Layout(args.tp, args.ep)
    print(f"{layout.world_size} ranks (tp {layout.tp} x ep {layout.ep}), {model}")
    print("| step | wall | on disk | detail |\n|---|---|---|---|")
    for step in run_workflow(args.dir, layout, model, full=args.full):
        detail = dict(step.detail)
        first = detail.pop("first", None)
        if first is not None:
            detail["first"] = f"{first['name']} layer {first['tags'].get('layer')} step {first['step']}"
            if first.get("hint"):
                detail["hint"] = first["hint"][:90]
        size = f"{step.nbytes / 1e6:.2f} MB" if step.nbytes else "-"
        print(f"| {step.name} | {step.seconds:.2f} s | {size} | {detail} |")


if __name__ == "__main__":
    main()
