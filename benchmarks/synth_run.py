"""Write a synthetic multi-rank run of a MoE model in stats mode, plus its 1-rank baseline.

    python benchmarks/synth_run.py OUT --tp 8 --ep 8 --dp 1 --layers 4 --steps 2 [--tokens 16] [--hidden 64]

Writes ``OUT/target`` (``tp * ep * dp`` ranks: three orthogonal axes, tp innermost) and
``OUT/baseline`` (1 rank, the same logical tensors unsharded). Per layer and step, the
logical tensors of a MoE decoder layer, each annotated with the dims that say how the
ranks hold it:

    attn.qkv          t (h d)[tp]          attention heads split over tp
    attn.out          t h                  after the all-reduce: replicated
    moe.router        t e                  replicated
    moe.expert_out    t h[ep:partial]      each ep rank's experts' partial sum
    mlp.dense         t f[tp]              dense-TP MLP shard
    layer.out         t h                  replicated
(every axis a tensor is not split over is declared ``axis:replicated``).

Attention-DP (``--dp``): each dp group holds its own tokens (``t[dp]``) of every tensor.

The records are written through the run format's own serializer
(``IndexRecord.to_json_line``, ``RankInfo``/``RunInfo``), the same bytes ``dumper.dump``
writes in stats mode, at ~1 us a record instead of ~300 us: a million-record run is
seconds to write, not tens of minutes on a loaded two-core machine. Statistics are
computed from real values (small deterministic tensors), so baseline and target agree
where the layout is honoured.
"""

from __future__ import annotations

import argparse
import os
import time
import zlib
from dataclasses import dataclass

from dumper.index_summary_write import write_summary
from dumper.format import (
    INDEX_FILE, RANK_INFO_FILE, RUN_INFO_FILE, SCHEMA_VERSION, TOOL_VERSION, AxisInfo, IndexRecord, RankInfo, RunInfo,
    TensorStats, rank_dir_name, write_json_atomic,
)


@dataclass(frozen=True)
class Layout:
    tp: int
    ep: int
    dp: int

    @property
    def world_size(self) -> int:
        return self.tp * self.ep * self.dp

    def axes(self, rank: int) -> dict[str, AxisInfo]:
        """tp innermost, then ep, then attention-dp: three orthogonal axes."""
        ranks = {"tp": rank % self.tp, "ep": rank // self.tp % self.ep, "dp": rank // (self.tp * self.ep)}
        return {axis: AxisInfo(rank=ranks[axis], size=size)
                for axis, size in (("tp", self.tp), ("ep", self.ep), ("dp", self.dp)) if size > 1}

    def dims(self, body: str, split: str | None) -> str:
        """The dims of a tensor whose ``split`` axis is in ``body``; every other axis replicated."""
        token = "t[dp]" if self.dp > 1 else "t"
        others = [f"{axis}:replicated" for axis, size in (("tp", self.tp), ("ep", self.ep)) if size > 1 and axis != split]
        return f"{token} {body}" + (f" # {' '.join(others)}" if others else "")


def _stats(values: list[float]) -> TensorStats:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / n
    return TensorStats(numel=n, min=min(values), max=max(values), mean=mean, abs_mean=sum(map(abs, values)) / n,
                       std=var ** 0.5, l2=sum(v * v for v in values) ** 0.5, nan=0, inf=0)


# name -> (dims after the token dim, the axis that splits it or None: replicated)
TENSORS = (
    ("attn.qkv", "(h d)[tp]", "tp"),
    ("attn.out", "h", None),
    ("moe.router", "e", None),
    ("moe.expert_out", "h[ep:partial]", "ep"),
    ("mlp.dense", "f[tp]", "tp"),
    ("layer.out", "h", None),
)


def write_run(path: str, layout: Layout, *, layers: int, steps: int, tokens: int, hidden: int,
              extra_tensors: int = 0, summaries: bool = True) -> int:
    """Write one run; returns the number of records."""
    os.makedirs(path, exist_ok=True)
    run_id = f"synth-{layout.tp}x{layout.ep}x{layout.dp}"
    now = time.time()
    write_json_atomic(os.path.join(path, RUN_INFO_FILE), RunInfo(
        schema_version=SCHEMA_VERSION, tool_version=TOOL_VERSION, run_id=run_id, command=["synth_run"], mode="stats",
        start_time=now, world_size=layout.world_size).to_json())
    names = list(TENSORS) + [(f"extra.t{i}", "h", None) for i in range(extra_tensors)]
    cache: dict[tuple[int, int], TensorStats] = {}
    total = 0
    for rank in range(layout.world_size):
        axes = layout.axes(rank)
        directory = os.path.join(path, rank_dir_name(rank))
        os.makedirs(directory, exist_ok=True)
        lines = []
        seq = 0
        for step in range(steps):
            for layer in range(layers):
                for name, body, split in names:
                    size = layout.tp if split == "tp" else 1
                    part = axes[split].rank if split == "tp" and split in axes else 0
                    width = max(1, hidden // size)
                    dims = layout.dims(body, split)
                    key = (width, part + 7 * layer)
                    stats = cache.get(key)
                    if stats is None:
                        stats = cache[key] = _stats([((i * 31 + key[1]) % 17) / 8.0 for i in range(tokens * width)])
                    shape = (max(1, tokens // layout.dp), width)
                    lines.append(IndexRecord(
                        seq=seq, step=step, name=name, tags={"layer": layer}, rank=rank, world_size=layout.world_size,
                        parallel=axes, dims=dims, nbytes=4 * shape[0] * shape[1], time=now, dtype="float32",
                        shape=shape, stats=stats, checksum=f"crc32:{zlib.crc32(repr(key).encode()):08x}", file=None,
                        key=None).to_json_line())
                    seq += 1
        with open(os.path.join(directory, INDEX_FILE), "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        write_json_atomic(os.path.join(directory, RANK_INFO_FILE), RankInfo(
            rank=rank, world_size=layout.world_size, pid=0, host="synth", argv=["synth_run"], run_id=run_id,
            start_time=now, parallel={a: {"rank": i.rank, "size": i.size} for a, i in axes.items()},
            status="closed", records=seq, last_step=steps - 1).to_json())
        if summaries:
            write_summary(directory)  # what the dumper writes when a rank closes
        total += seq
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tp", type=int, default=8)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--dp", type=int, default=1)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--extra-tensors", type=int, default=0, help="more replicated tensors per layer (record count)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-summary", action="store_true",
                        help="no index-summary.json (a run written before it, or a rank that never closed)")
    args = parser.parse_args()
    layout = Layout(args.tp, args.ep, args.dp)
    common = dict(layers=args.layers, steps=args.steps, tokens=args.tokens, hidden=args.hidden,
                  extra_tensors=args.extra_tensors, summaries=not args.no_summary)
    start = time.perf_counter()
    target = write_run(os.path.join(args.out, "target"), layout, **common)
    baseline = 0 if args.no_baseline else write_run(os.path.join(args.out, "baseline"), Layout(1, 1, 1), **common)
    print(f"target {target} records ({layout.world_size} ranks), baseline {baseline} records, "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
