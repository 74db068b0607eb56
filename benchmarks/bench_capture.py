"""The capture goals of issue 17, as ratios measured in interleaved rounds (A/B/A/B).

(a) sustained capture until the data is on disk (dump every tensor of ``--steps`` steps
    through the default 1 GB queue, ``close()``, then ``fsync`` of every data file)
    vs a plain write + ``fsync`` of the same bytes;
(b) the same capture until ``close()`` returns vs a plain write of the same bytes
    (page cache, no fsync);
(c) engine stall per dump (host time inside ``dump()``, writer warm, queue not full)
    vs a warm bare copy: on CUDA ``t.to("cpu", non_blocking=True)`` after the caching
    host allocator holds its blocks; on CPU ``t.clone()`` (the least a snapshot costs);
    and again with the writer held back until the step's dumps are in (what the dump
    path costs without GIL hand-offs to a busy writer).

Each round runs the plain baseline and then every variant once, so that the machine's
drift hits all of them alike; the first round only warms up. The table gives each
ratio's median over rounds with its range, and the medians of the absolute figures.
Variants (``--variants``, comma-separated): ``default`` (the dumper as configured by
default), ``noflush`` (``DUMPCMP_FLUSH_MB=0``), ``serial`` (no overlap of file writes
with the next batch's digest), ``workers4`` (4 digest worker threads). Variants the
code under test does not know are skipped, so the same script measures older commits.

    python benchmarks/bench_capture.py --device cpu                       # ~2-3 min on 2 cores
    python benchmarks/bench_capture.py --device cuda                      # 24 x 8 MB bf16 a step
    python benchmarks/bench_capture.py --device cuda --variants default,noflush,serial
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

import dumper.writer as writer_module
from dumper.api import Dumper
from dumper.stats import raw_bytes

VARIANTS = ("default", "noflush", "serial", "workers4")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fsync_tree(path: str) -> None:
    for directory, _, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def variant_settings(name: str) -> tuple[dict, dict] | None:
    """(configure() changes, writer module settings) of a variant; None when this code lacks it."""
    if name == "default":
        return {}, {}
    if name == "noflush":
        return ({"flush_bytes": 0}, {}) if _config_has("flush_bytes") else None
    if name == "serial":
        return ({}, {"OVERLAP_WRITES": False}) if hasattr(writer_module, "OVERLAP_WRITES") else None
    if name == "workers4":
        return {}, {"DIGEST_WORKERS": 4}
    raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")


def _config_has(field: str) -> bool:
    from dataclasses import fields

    from dumper.config import DumpConfig

    return field in {f.name for f in fields(DumpConfig)}


class Module:
    """Set writer module constants for one measurement, and put them back."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.saved: dict = {}

    def __enter__(self) -> None:
        for key, value in self.settings.items():
            self.saved[key] = getattr(writer_module, key)
            setattr(writer_module, key, value)

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            setattr(writer_module, key, value)


def capture(tensors, steps: int, work_dir: str, device: str, settings: tuple[dict, dict]) -> tuple[float, float]:
    """Seconds from the first dump until close() returns, and until every data file is fsync'd."""
    run_dir = os.path.join(work_dir, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    changes, module = settings
    with Module(module):
        dumper = Dumper()
        dumper.configure(dir=run_dir, run_id="bench-capture", queue_bytes=1 << 30, **changes)
        dumper.dump("warmup", tensors[0][:1])  # writer thread and rank directory, not timed
        dumper.flush()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            for index, tensor in enumerate(tensors):
                dumper.dump("t", tensor, index=index)
            dumper.step()
        sync(device)
        dumper.close()
        closed = time.perf_counter() - start
        fsync_tree(run_dir)
        on_disk = time.perf_counter() - start
    shutil.rmtree(run_dir, ignore_errors=True)
    return closed, on_disk


def plain_write(host, steps: int, work_dir: str) -> tuple[float, float]:
    """One plain file write of the same bytes (host copies made beforehand): until written, until fsync'd."""
    path = os.path.join(work_dir, "plain.bin")
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(steps):
            for tensor in host:
                data = raw_bytes(tensor)
                position = 0
                while position < len(data):
                    position += os.write(fd, data[position:position + (1 << 26)])
        written = time.perf_counter() - start
        os.fsync(fd)
    finally:
        os.close(fd)
    on_disk = time.perf_counter() - start
    os.unlink(path)
    return written, on_disk


class WriterGate:
    """Holds a dumper's writer thread back while the engine dumps a step (diagnostic).

    With the gate closed the writer takes its batch but does not work on it, so the
    engine thread's time inside dump() is the dump path alone, without the GIL
    hand-offs to a busy writer; the difference to the open-gate figure is their cost.
    """

    def __init__(self, dumper: Dumper) -> None:
        self.open = threading.Event()
        self.open.set()
        writer = dumper._writer  # a private attribute: a benchmark's diagnostic hook
        take = writer._take_batch

        def gated_take():
            batch = take()
            self.open.wait()
            return batch

        writer._take_batch = gated_take


def per_call_stall(tensors, dumper: Dumper | None, device: str, gate: WriterGate | None = None) -> float:
    """Median host seconds per call over one step: dumper.dump(), or the bare copy when ``dumper`` is None."""
    times = []
    kept = []
    sync(device)
    if gate is not None:
        gate.open.clear()
    for index, tensor in enumerate(tensors):
        t0 = time.perf_counter()
        if dumper is not None:
            dumper.dump("t", tensor, index=index)
        elif device == "cuda":
            kept.append(tensor.to("cpu", non_blocking=True))
        else:
            kept.append(tensor.clone())
        times.append(time.perf_counter() - t0)
    sync(device)
    if gate is not None:
        gate.open.set()
    if dumper is not None:
        dumper.step()
        dumper.flush()  # the writer drains between steps (not timed): the queue is never full here
    kept.clear()
    return statistics.median(times)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--mb-per-tensor", type=float, default=8.0)
    parser.add_argument("--tensors", type=int, default=24)
    parser.add_argument("--steps", type=int, default=0, help="steps of a capture (default: 20 cuda, 8 cpu)")
    parser.add_argument("--rounds", type=int, default=0, help="measured rounds (default: 5 cuda, 4 cpu)")
    parser.add_argument("--stall-rounds", type=int, default=20)
    parser.add_argument("--variants", default="default")
    parser.add_argument("--dir", default=None, help="scratch directory on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    steps = args.steps or (20 if cuda else 8)
    rounds = args.rounds or (5 if cuda else 4)
    variants = {}
    for name in args.variants.split(","):
        settings = variant_settings(name)
        if settings is None:
            print(f"# variant {name}: not in this code, skipped", file=sys.stderr)
        else:
            variants[name] = settings
    element = torch.empty(0, dtype=dtype).element_size()
    numel = int(args.mb_per_tensor * (1 << 20) / element)
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(numel, generator=generator).to(dtype).to(args.device) for _ in range(args.tensors)]
    host = [t.cpu() for t in tensors]
    capture_mb = args.mb_per_tensor * args.tensors * steps
    work_dir = args.dir or tempfile.mkdtemp(prefix="dumpcmp-capture-")
    os.makedirs(work_dir, exist_ok=True)

    # (a), (b): rounds of [plain, variant, variant, ...]; round 0 warms up.
    ratios_disk: dict[str, list[float]] = {name: [] for name in variants}
    ratios_close: dict[str, list[float]] = {name: [] for name in variants}
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in ["plain", *variants]}
    for round_number in range(rounds + 1):
        written, plain_disk = plain_write(host, steps, work_dir)
        measured = {name: capture(tensors, steps, work_dir, args.device, settings) for name, settings in variants.items()}
        if round_number == 0:
            continue
        rates["plain"].append((capture_mb / written, capture_mb / plain_disk))
        for name, (closed, on_disk) in measured.items():
            ratios_close[name].append(written / closed)
            ratios_disk[name].append(plain_disk / on_disk)
            rates[name].append((capture_mb / closed, capture_mb / on_disk))

    # (c): rounds of [bare step, dumper step], warm.
    stall_dumper = Dumper()
    stall_dumper.configure(dir=os.path.join(work_dir, "stall"), run_id="bench-stall",
                           queue_bytes=int(args.mb_per_tensor * args.tensors * 3) << 20)
    for _ in range(3):
        per_call_stall(tensors, None, args.device)
        per_call_stall(tensors, stall_dumper, args.device)
    gate = WriterGate(stall_dumper)
    bare_calls, dump_calls, stall_ratios, held_calls, held_ratios = [], [], [], [], []
    for _ in range(args.stall_rounds):
        bare = per_call_stall(tensors, None, args.device)
        dumped = per_call_stall(tensors, stall_dumper, args.device)
        held = per_call_stall(tensors, stall_dumper, args.device, gate)
        bare_calls.append(bare)
        dump_calls.append(dumped)
        stall_ratios.append(dumped / bare)
        held_calls.append(held)
        held_ratios.append(held / bare)
    stall_dumper.close()
    shutil.rmtree(os.path.join(work_dir, "stall"), ignore_errors=True)

    gpu = f", {torch.cuda.get_device_name()}" if cuda else ""
    print(f"# capture benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores{gpu}, "
          f"torch {torch.__version__}, load {os.getloadavg()[0]:.1f}, device {args.device}, {str(dtype)[6:]}")
    print(f"# {args.tensors} tensors x {args.mb_per_tensor:g} MB a step, {steps} steps = {capture_mb:.0f} MB a capture "
          f"(1 GB queue); {rounds} measured rounds after 1 warm-up, interleaved: plain, {', '.join(variants)}; "
          f"dir {work_dir}")
    print()
    print("| goal | variant | ratio, median (range) | dumper (median MB/s; c: us a call) | baseline (same) |")
    print("|---|---|---|---|---|")
    plain_written = statistics.median(r[0] for r in rates["plain"])
    plain_disk = statistics.median(r[1] for r in rates["plain"])
    for name in variants:
        print(f"| (a) until on disk vs write + fsync | {name} | {spread(ratios_disk[name])}x | "
              f"{statistics.median(r[1] for r in rates[name]):.0f} | {plain_disk:.0f} |")
    for name in variants:
        print(f"| (b) until close() vs plain write | {name} | {spread(ratios_close[name])}x | "
              f"{statistics.median(r[0] for r in rates[name]):.0f} | {plain_written:.0f} |")
    bare_label = "warm bare .to('cpu', non_blocking=True)" if cuda else "t.clone()"
    print(f"| (c) stall per dump vs {bare_label} | default | {spread(stall_ratios)}x | "
          f"{spread([t * 1e6 for t in dump_calls], '{:.1f}')} us | {spread([t * 1e6 for t in bare_calls], '{:.1f}')} us |")
    print(f"| (c) same, writer held back during the step (diagnostic: no GIL hand-offs to it) | default | "
          f"{spread(held_ratios)}x | {spread([t * 1e6 for t in held_calls], '{:.1f}')} us | same |")
    if args.dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
