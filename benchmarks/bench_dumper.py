"""Dumper costs, measured as ratios against baselines in the same run.

1. Disabled cost of one ``dumper.dump()`` call vs an empty Python function call.
2. Engine-side stall per dumped MB (time the engine thread spends inside dump(), warm
   buffers) vs an inline ``torch.save(t.cpu())`` per tensor (what SGLang's dumper does)
   and, on CUDA, vs a bare ``t.to("cpu", non_blocking=True)`` (pinned destination).
3. Cold burst and sustained dumping (a queue smaller than the data: the engine waits
   only when it is full); end-to-end time until the writer is done vs one plain file
   write of the same bytes; with ``os.sync()`` in both, the rate the disk sustains.
4. The writer's own costs per MB, single-threaded: stats, checksum, file write.

    python benchmarks/bench_dumper.py [--mb-per-tensor 8] [--tensors 24] [--steps 10]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--dir SCRATCH]

Prints a markdown table; docs/performance.md records the results with date and machine.
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

import torch

from dumper.api import Dumper


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


def _fresh_dir(work_dir: str, name: str) -> str:
    path = os.path.join(work_dir, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def dump_pass(dumper: Dumper, tensors: list[torch.Tensor], steps: int) -> float:
    """Seconds the engine thread spends inside dump() for ``steps`` steps."""
    stall = 0.0
    for _ in range(steps):
        for index, tensor in enumerate(tensors):
            t0 = time.perf_counter()
            dumper.dump("t", tensor, index=index)
            stall += time.perf_counter() - t0
        dumper.step()
    return stall


def dumper_run(tensors, steps, work_dir, *, queue_mb: float, device: str, warm_steps: int = 0,
               sync_disk: bool = False) -> dict[str, float]:
    """Engine stall and the time until everything is written (and synced, if asked).

    ``warm_steps``: dump that many steps and flush before measuring, so that the host
    buffers are reused (an engine that dumps every step is in this state after a while).
    """
    run_dir = _fresh_dir(work_dir, "run")
    dumper = Dumper()
    dumper.configure(dir=run_dir, run_id="bench", queue_bytes=int(queue_mb * (1 << 20)))
    if warm_steps:
        dump_pass(dumper, tensors, warm_steps)
    else:
        dumper.dump("warmup", tensors[0][:1])  # writer thread, rank directory
    dumper.flush()
    _sync(device)
    start = time.perf_counter()
    stall = dump_pass(dumper, tensors, steps)
    _sync(device)
    engine_done = time.perf_counter() - start
    dumper.close()
    if sync_disk:
        os.sync()
    total = time.perf_counter() - start
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"stall": stall, "engine": engine_done, "total": total}


def torch_save_stall(tensors, steps, work_dir) -> float:
    out = _fresh_dir(work_dir, "torch_save")
    os.makedirs(out)
    stall = 0.0
    for step in range(steps):
        for index, tensor in enumerate(tensors):
            t0 = time.perf_counter()
            # The inline approach: the engine thread copies to the host and pickles to disk.
            torch.save(tensor.cpu(), os.path.join(out, f"step={step}___index={index}.pt"))
            stall += time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return stall


def bare_pinned_stall(tensors, steps) -> float:
    """``t.to("cpu", non_blocking=True)``: torch pins the destination; nothing is written."""
    kept = []
    stall = 0.0
    for _ in range(steps):
        for tensor in tensors:
            t0 = time.perf_counter()
            kept.append(tensor.to("cpu", non_blocking=True))
            stall += time.perf_counter() - t0
        torch.cuda.synchronize()
        kept.clear()
    return stall


def bare_preallocated_stall(tensors, steps) -> float:
    """``pinned.copy_(t, non_blocking=True)`` into buffers pinned beforehand, on the current stream."""
    pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    stall = 0.0
    for _ in range(steps):
        for buffer, tensor in zip(pinned, tensors):
            t0 = time.perf_counter()
            buffer.copy_(tensor, non_blocking=True)
            stall += time.perf_counter() - t0
        torch.cuda.synchronize()
    return stall


def plain_write_seconds(tensors, steps, work_dir, *, sync_disk: bool = False) -> float:
    """One plain file write of the same bytes (from host copies made beforehand)."""
    from dumper.stats import raw_bytes

    host = [t.cpu() for t in tensors]
    path = os.path.join(work_dir, "plain.bin")
    start = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(steps):
            for tensor in host:
                handle.write(raw_bytes(tensor))
        if sync_disk:
            handle.flush()
            os.fsync(handle.fileno())
    elapsed = time.perf_counter() - start
    os.unlink(path)
    return elapsed


def writer_parts_ms_per_mb(tensors, work_dir) -> dict[str, float]:
    """The writer's costs on one thread: stats, checksum, one safetensors file."""
    from dumper.stats import checksum, tensor_stats

    host = [t.cpu() for t in tensors]
    mb = sum(t.numel() * t.element_size() for t in host) / (1 << 20)
    parts = {}
    t0 = time.perf_counter()
    for tensor in host:
        tensor_stats(tensor)
    parts["stats"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for tensor in host:
        checksum(tensor)
    parts["checksum"] = time.perf_counter() - t0
    path = os.path.join(work_dir, "parts.safetensors")
    t0 = time.perf_counter()
    _write_safetensors({str(i): t for i, t in enumerate(host)}, path)
    parts["file write"] = time.perf_counter() - t0
    os.unlink(path)
    return {key: value / mb * 1e3 for key, value in parts.items()}


def _write_safetensors(tensors, path) -> None:
    try:
        from dumper.safetensors_io import write_safetensors
    except ImportError:  # older writer: safetensors' own save_file
        from safetensors.torch import save_file as write_safetensors
    write_safetensors(tensors, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb-per-tensor", type=float, default=8.0)
    parser.add_argument("--tensors", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sustained-steps", type=int, default=0, help="default: 3x --steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--digest-workers", type=int, default=0, help="dumper.writer.DIGEST_WORKERS")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    import dumper.writer

    dumper.writer.DIGEST_WORKERS = args.digest_workers

    dtype = getattr(torch, args.dtype)
    element = torch.empty(0, dtype=dtype).element_size()
    numel = int(args.mb_per_tensor * (1 << 20) / element)
    tensors = [torch.randn(numel, device=args.device, dtype=dtype) for _ in range(args.tensors)]
    step_mb = args.mb_per_tensor * args.tensors
    burst_mb = step_mb * args.steps
    sustained_steps = args.sustained_steps or 3 * args.steps
    sustained_mb = step_mb * sustained_steps
    work_dir = args.dir or tempfile.mkdtemp(prefix="dumpcmp-bench-")
    os.makedirs(work_dir, exist_ok=True)
    repeats = args.repeats
    med = statistics.median

    dump_ns, empty_ns = disabled_call_ns()
    save = med(torch_save_stall(tensors, 1, work_dir) for _ in range(repeats)) / step_mb
    bare = med(bare_pinned_stall(tensors, args.steps) for _ in range(repeats)) / burst_mb if args.device == "cuda" else None
    prealloc = (med(bare_preallocated_stall(tensors, args.steps) for _ in range(repeats)) / burst_mb
                if args.device == "cuda" else None)
    queue_all = burst_mb * 2 + 64
    warm = [dumper_run(tensors, args.steps, work_dir, queue_mb=queue_all, device=args.device, warm_steps=args.steps)
            for _ in range(repeats)]
    cold = [dumper_run(tensors, args.steps, work_dir, queue_mb=queue_all, device=args.device) for _ in range(repeats)]
    sustained = [dumper_run(tensors, sustained_steps, work_dir, queue_mb=1024, device=args.device, warm_steps=1)
                 for _ in range(repeats)]
    plain = med(plain_write_seconds(tensors, sustained_steps, work_dir) for _ in range(repeats))
    synced = [dumper_run(tensors, sustained_steps, work_dir, queue_mb=1024, device=args.device, warm_steps=1,
                         sync_disk=True) for _ in range(repeats)]
    plain_synced = med(plain_write_seconds(tensors, sustained_steps, work_dir, sync_disk=True) for _ in range(repeats))
    parts = writer_parts_ms_per_mb(tensors, work_dir)

    warm_stall = med(r["stall"] for r in warm) / burst_mb
    cold_stall = med(r["stall"] for r in cold) / burst_mb
    sustained_stall = med(r["stall"] for r in sustained) / sustained_mb
    sustained_total = med(r["total"] for r in sustained)
    synced_total = med(r["total"] for r in synced)

    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"# dumper benchmark, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores{gpu}, torch {torch.__version__}, digest workers {args.digest_workers}, device {args.device}, {args.dtype}")
    print(f"# {args.tensors} tensors x {args.mb_per_tensor} MB = {step_mb:.0f} MB a step; burst {args.steps} steps, "
          f"sustained {sustained_steps} steps ({sustained_mb:.0f} MB, 1024 MB queue); median of {repeats}")
    print()
    print("| measure | value | baseline | ratio |")
    print("|---|---|---|---|")
    print(f"| disabled dump() call | {dump_ns:.0f} ns | empty function call {empty_ns:.0f} ns | {dump_ns / empty_ns:.2f}x |")
    ms = lambda seconds_per_mb: f"{seconds_per_mb * 1e3:.4f} ms/MB"  # noqa: E731
    print(f"| engine stall, warm buffers | {ms(warm_stall)} | inline torch.save {ms(save)} | {warm_stall / save:.3f}x |")
    if bare is not None:
        print(f"| engine stall, warm buffers | {ms(warm_stall)} | bare .to('cpu', non_blocking=True) {ms(bare)} | "
              f"{warm_stall / bare:.2f}x |")
    if prealloc is not None:
        print(f"| engine stall, warm buffers | {ms(warm_stall)} | bare copy_ into preallocated pinned {ms(prealloc)} | "
              f"{warm_stall / prealloc:.2f}x |")
    print(f"| engine stall, cold burst (fits in queue) | {ms(cold_stall)} | inline torch.save {ms(save)} | "
          f"{cold_stall / save:.3f}x |")
    print(f"| engine stall, sustained (queue full) | {ms(sustained_stall)} | inline torch.save {ms(save)} | "
          f"{sustained_stall / save:.3f}x |")
    print(f"| end-to-end capture throughput, sustained | {sustained_mb / sustained_total:.0f} MB/s | "
          f"one plain file write {sustained_mb / plain:.0f} MB/s | {plain / sustained_total:.2f}x |")
    print(f"| same, until os.sync() returns | {sustained_mb / synced_total:.0f} MB/s | "
          f"plain write + fsync (the disk) {sustained_mb / plain_synced:.0f} MB/s | {plain_synced / synced_total:.2f}x |")
    print()
    print("writer costs, one thread: " + ", ".join(f"{k} {v:.3f} ms/MB ({1e3 / v:.0f} MB/s)" for k, v in parts.items()))
    if args.dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
