"""Dumper costs, measured as ratios against baselines in the same run.

1. Disabled cost of one ``dumper.dump()`` call vs an empty Python function call.
2. Engine-side stall per dumped MB: time the engine thread spends inside dump()
   vs an inline ``torch.save`` per tensor (what SGLang's dumper does), for a burst
   that fits in the writer queue and for sustained dumping larger than the queue.
   Also the end-to-end time until everything is on disk vs one plain file write of
   the same bytes.

    python benchmarks/bench_dumper.py [--mb-per-tensor 4] [--tensors 24] [--steps 5] [--device cpu|cuda]

Prints a markdown table; paste it into docs/performance.md with the date and machine.
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
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dumper.api import Dumper  # noqa: E402


def disabled_call_ns(repeat: int = 5, number: int = 1_000_000) -> tuple[float, float]:
    off = Dumper()
    tensor = torch.zeros(4)

    def empty(name, value, *, dims=None, **tags):
        return None

    def call_dump():
        off.dump("hidden", tensor, dims="t h", layer=3)

    def call_empty():
        empty("hidden", tensor, dims="t h", layer=3)

    dump_ns = min(timeit.repeat(call_dump, number=number, repeat=repeat)) / number * 1e9
    empty_ns = min(timeit.repeat(call_empty, number=number, repeat=repeat)) / number * 1e9
    return dump_ns, empty_ns


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def engine_stall(tensors: list[torch.Tensor], steps: int, work_dir: str, *, queue_mb: float, device: str,
                 warm: bool = False) -> dict[str, float]:
    """Seconds the engine thread spends in dump calls, and until all is on disk.

    ``warm``: dump the same tensors once before measuring, so the snapshot buffers
    are reused (an engine that dumps every step is in this state after step one).
    """
    run_dir = os.path.join(work_dir, f"run-{queue_mb}")
    shutil.rmtree(run_dir, ignore_errors=True)
    dumper = Dumper()
    dumper.configure(dir=run_dir, run_id="bench", queue_bytes=int(queue_mb * (1 << 20)))
    # Warm up: writer thread, rank directory, first file.
    for tensor in tensors if warm else tensors[:1]:
        dumper.dump("warmup", tensor)
    dumper.flush()
    stall = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        for index, tensor in enumerate(tensors):
            t0 = time.perf_counter()
            dumper.dump("t", tensor, index=index)
            stall += time.perf_counter() - t0
        dumper.step()
    _sync(device)
    dumper.close()
    total = time.perf_counter() - start
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"stall": stall, "total": total}


def torch_save_stall(tensors: list[torch.Tensor], steps: int, work_dir: str) -> float:
    out = os.path.join(work_dir, "torch_save")
    os.makedirs(out, exist_ok=True)
    stall = 0.0
    for step in range(steps):
        for index, tensor in enumerate(tensors):
            t0 = time.perf_counter()
            # The inline approach: the engine thread copies to the host and pickles to disk.
            torch.save(tensor.cpu(), os.path.join(out, f"step={step}___index={index}.pt"))
            stall += time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return stall


def plain_write_seconds(tensors: list[torch.Tensor], steps: int, work_dir: str) -> float:
    """One plain file write of the same bytes (from the same host tensors)."""
    from dumper.stats import raw_bytes

    host = [t.cpu() for t in tensors]
    path = os.path.join(work_dir, "plain.bin")
    start = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(steps):
            for tensor in host:
                handle.write(raw_bytes(tensor))
    elapsed = time.perf_counter() - start
    os.unlink(path)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb-per-tensor", type=float, default=4.0)
    parser.add_argument("--tensors", type=int, default=24)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    numel = int(args.mb_per_tensor * (1 << 20) / 4)
    tensors = [torch.randn(numel, device=args.device) for _ in range(args.tensors)]
    total_mb = args.mb_per_tensor * args.tensors * args.steps
    work_dir = args.dir or tempfile.mkdtemp(prefix="dumpcmp-bench-")

    dump_ns, empty_ns = disabled_call_ns()
    repeats = 3
    save = statistics.median(torch_save_stall(tensors, args.steps, work_dir) for _ in range(repeats))
    burst = [engine_stall(tensors, args.steps, work_dir, queue_mb=total_mb * 2, device=args.device) for _ in range(repeats)]
    steady = [engine_stall(tensors, 1, work_dir, queue_mb=total_mb * 2, device=args.device, warm=True) for _ in range(repeats)]
    step_mb = args.mb_per_tensor * args.tensors
    sustained = [engine_stall(tensors, args.steps, work_dir, queue_mb=64, device=args.device) for _ in range(repeats)]
    plain = statistics.median(plain_write_seconds(tensors, args.steps, work_dir) for _ in range(repeats))
    burst_stall = statistics.median(r["stall"] for r in burst)
    steady_stall = statistics.median(r["stall"] for r in steady)
    sustained_stall = statistics.median(r["stall"] for r in sustained)
    sustained_total = statistics.median(r["total"] for r in sustained)

    print(f"# dumper benchmark, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, device {args.device}")
    print(f"# {args.tensors} tensors x {args.mb_per_tensor} MB x {args.steps} steps = {total_mb:.0f} MB, median of {repeats}")
    print()
    print("| measure | value | baseline | ratio |")
    print("|---|---|---|---|")
    print(f"| disabled dump() call | {dump_ns:.0f} ns | empty function call {empty_ns:.0f} ns | {dump_ns / empty_ns:.2f}x |")
    print(f"| engine stall per MB, one step, warm buffers | {steady_stall / step_mb * 1e3:.3f} ms | inline torch.save {save / total_mb * 1e3:.3f} ms | {steady_stall / step_mb / (save / total_mb):.3f}x |")
    print(f"| engine stall per MB, cold burst (fits in queue) | {burst_stall / total_mb * 1e3:.3f} ms | inline torch.save {save / total_mb * 1e3:.3f} ms | {burst_stall / save:.3f}x |")
    print(f"| engine stall per MB, sustained (64 MB queue) | {sustained_stall / total_mb * 1e3:.3f} ms | inline torch.save {save / total_mb * 1e3:.3f} ms | {sustained_stall / save:.3f}x |")
    print(f"| end-to-end capture throughput, sustained | {total_mb / sustained_total:.0f} MB/s | one plain file write {total_mb / plain:.0f} MB/s | {plain / sustained_total:.2f}x |")
    if args.dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
