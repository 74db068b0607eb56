"""Cost of the collective trace (dumper/collectives.py) on a healthy run.

1. Per call: a gloo world of one runs ``all_reduce`` on a [17, 64] fp32 tensor (the
   example engine's shape) with and without the tracer installed, in alternating blocks;
   the overhead is the median difference per call.
2. Per step: the example engine (``--ep 2``, stats mode) is dumped once; its index gives
   the step time (first dump of a step to the first dump of the next) and its trace the
   collectives per step; the cost is collectives/step x overhead/call / step time.

    python benchmarks/bench_collectives.py [--calls 2000] [--blocks 9]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def per_call_overhead(calls: int, blocks: int) -> tuple[float, float]:
    import torch
    import torch.distributed as dist

    from dumper.api import Dumper
    from dumper.collectives import CollectiveTracer, installed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    x = torch.ones(17, 64)
    owner = Dumper()
    owner.configure(dir=tempfile.mkdtemp(), mode="stats", collectives=False)

    def block(traced: bool) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            dist.all_reduce(x)
        return (time.perf_counter() - start) / calls

    plain, traced = [], []
    for _ in range(blocks):
        plain.append(block(False))
        tracer = CollectiveTracer(owner=owner)
        with installed(tracer):
            tracer.attach(tempfile.mkdtemp())
            traced.append(block(True))
    dist.destroy_process_group()
    return statistics.median(plain), statistics.median(traced) - statistics.median(plain)


def engine_step(root: str) -> tuple[float, float]:
    run_dir = os.path.join(root, "run")
    subprocess.run([sys.executable, "-m", "comparator.cli", "run", "--mode", "stats", "--patch", "example/moe_engine",
                    "--dir", run_dir, "--", sys.executable, "-m", "examples.moe_engine", "--ep", "2", "--steps", "16"],
                   check=True, capture_output=True)
    rank = os.path.join(run_dir, "rank-00000")
    first_time: dict[int, float] = {}
    with open(os.path.join(rank, "index.jsonl")) as handle:
        for line in handle:
            record = json.loads(line)
            first_time.setdefault(record["step"], record["time"])
    steps = sorted(first_time)
    step_times = [first_time[b] - first_time[a] for a, b in zip(steps, steps[1:])]
    with open(os.path.join(rank, "collectives.jsonl")) as handle:
        per_step = sum(1 for _ in handle) / len(steps)
    return statistics.median(step_times[1:] or step_times), per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=9)
    args = parser.parse_args()
    for key in [k for k in os.environ if k.startswith("DUMPCMP_")]:
        del os.environ[key]
    plain, overhead = per_call_overhead(args.calls, args.blocks)
    with tempfile.TemporaryDirectory() as root:
        step, per_step = engine_step(root)
    print(f"all_reduce [17, 64] fp32, gloo world of one: {plain * 1e6:.1f} us/call; tracer adds {overhead * 1e6:.2f} us/call")
    print(f"example engine --ep 2: step {step * 1e3:.2f} ms, {per_step:.1f} collectives/step on rank 0")
    print(f"trace cost: {per_step * overhead / step * 100:.3f}% of step time (target < 2%)")


if __name__ == "__main__":
    main()
