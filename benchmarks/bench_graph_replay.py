"""What dumping costs per CUDA-graph replay: a dumped replay against an undumped one, in one run.

A decode-like step (``--layers`` x [linear, GELU] on a [batch, hidden] bf16 tensor,
one dump per layer) is captured twice from the same weights: once with dumping off
(no copies in the graph) and once with dumping on (one static-buffer copy per layer,
emitted after each replay through the async D2H path). Rounds alternate A/B/A/B,
each ``--replays`` replays followed by a device synchronisation; the writer is
flushed between rounds (its disk time is reported apart: it runs beside the engine).

    python benchmarks/bench_graph_replay.py [--layers 32 --hidden 4096 --batch 8]

Prints per-replay times (median and spread over rounds), the host time per replay
call, and the ratio dumped/undumped; ``--json PATH`` also writes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from dumper.api import Dumper


def step(local: Dumper, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    for layer, weight in enumerate(weights):
        x = F.gelu(F.linear(x, weight))
        local.dump("hidden", x, dims="t h", layer=layer)
    return x


def capture(local: Dumper, static_x: torch.Tensor, weights: list[torch.Tensor], *, dumping: bool):
    local.enabled = False
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(local, static_x, weights)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    local.enabled = dumping
    local.set_real_tokens(static_x.shape[0])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(local, static_x, weights)
    local.enabled = True
    return graph, out


def timed_round(local: Dumper, graph, replays: int, first_step: int) -> tuple[float, float, float]:
    """(seconds per replay, host seconds per replay call, writer flush seconds)."""
    torch.cuda.synchronize()
    host = 0.0
    start = time.perf_counter()
    for index in range(replays):
        local.set_step(first_step + index)
        call = time.perf_counter()
        graph.replay()
        host += time.perf_counter() - call
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    flush_start = time.perf_counter()
    local.flush()
    return wall / replays, host / replays, time.perf_counter() - flush_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("tensor", "stats"), default="tensor")
    parser.add_argument("--dir", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    weights = [torch.randn(args.hidden, args.hidden, device="cuda", dtype=torch.bfloat16) * args.hidden ** -0.5
               for _ in range(args.layers)]
    static_x = torch.randn(args.batch, args.hidden, device="cuda", dtype=torch.bfloat16)
    run_dir = args.dir or tempfile.mkdtemp(prefix="bench-graph-")
    local = Dumper()
    local.configure(dir=run_dir, run_id="bench-graph", mode=args.mode, overwrite=True)
    local.dump("warmup", torch.zeros(1, device="cuda"))  # writer, pinned arena, CUDAGraph hook
    local.flush()
    plain, _ = capture(local, static_x, weights, dumping=False)
    dumped, _ = capture(local, static_x, weights, dumping=True)
    timed_round(local, plain, 20, 0)  # warm both
    timed_round(local, dumped, 20, 0)
    rows: dict[str, list[tuple[float, float, float]]] = {"undumped": [], "dumped": []}
    next_step = 100
    for _ in range(args.rounds):
        for name, graph in (("undumped", plain), ("dumped", dumped)):
            rows[name].append(timed_round(local, graph, args.replays, next_step))
            next_step += args.replays
    local.close()
    ratios = [d[0] / u[0] for u, d in zip(rows["undumped"], rows["dumped"])]
    record_bytes = args.batch * args.hidden * 2
    result = {
        "config": vars(args) | {"record_bytes": record_bytes, "records_per_replay": args.layers,
                                "device": torch.cuda.get_device_name()},
        "undumped_us": [1e6 * r[0] for r in rows["undumped"]],
        "dumped_us": [1e6 * r[0] for r in rows["dumped"]],
        "dumped_host_call_us": [1e6 * r[1] for r in rows["dumped"]],
        "undumped_host_call_us": [1e6 * r[1] for r in rows["undumped"]],
        "dumped_flush_s": [r[2] for r in rows["dumped"]],
        "ratio": ratios,
        "ratio_median": statistics.median(ratios),
    }
    for key in ("undumped_us", "dumped_us", "undumped_host_call_us", "dumped_host_call_us"):
        values = result[key]
        print(f"{key:24s} median {statistics.median(values):9.1f}  min {min(values):9.1f}  max {max(values):9.1f}")
    print(f"{'writer flush after round':24s} median {statistics.median(result['dumped_flush_s']):9.3f} s")
    print(f"ratio dumped/undumped per replay: median {statistics.median(ratios):.2f} "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
