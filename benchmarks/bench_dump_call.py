"""Where the engine thread's time goes in one CUDA dump() call (host microseconds per call).

Each variant copies the same ``--tensors`` x ``--mb`` MB bf16 tensors ``--steps`` times,
synchronising between steps; the table shows the host time per call:

- copy_ into pinned buffers allocated beforehand, on the current stream;
- copy_ into slices of one pinned arena, current stream, then on a side stream;
- the dumper's Snapshotter.take alone (no writer);
- dumper.dump() with its writer running;

and whether a thread blocked in ``Event.synchronize()`` lets the main thread run Python.

    python benchmarks/bench_dump_call.py [--mb 8] [--tensors 24] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from dumper.api import Dumper
from dumper.snapshot import Snapshotter


def per_call_us(tensors, steps, call) -> float:
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        for index, tensor in enumerate(tensors):
            t0 = time.perf_counter()
            call(index, tensor)
            times.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
    return statistics.median(times) * 1e6, statistics.mean(times) * 1e6


def sleep_cycles_per_ms() -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10**7)
    end.record()
    end.synchronize()
    return 10**7 / start.elapsed_time(end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--tensors", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    numel = int(args.mb * (1 << 20) / 2)
    tensors = [torch.randn(numel, device="cuda", dtype=torch.bfloat16) for _ in range(args.tensors)]
    nbytes = numel * 2
    rows = []

    pinned = [torch.empty(numel, dtype=torch.bfloat16, pin_memory=True) for _ in tensors]
    rows.append(("copy_ into preallocated pinned, current stream",
                 per_call_us(tensors, args.steps, lambda i, t: pinned[i].copy_(t, non_blocking=True))))
    arena = torch.empty(nbytes * len(tensors), dtype=torch.uint8, pin_memory=True)
    slices = [arena[i * nbytes:(i + 1) * nbytes].view(torch.bfloat16) for i in range(len(tensors))]
    rows.append(("copy_ into pinned arena slices, current stream",
                 per_call_us(tensors, args.steps, lambda i, t: slices[i].copy_(t, non_blocking=True))))
    side = torch.cuda.Stream()

    def side_copy(i, t):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            slices[i].copy_(t, non_blocking=True)
            torch.cuda.Event().record(side)
        t.record_stream(side)

    rows.append(("same on a side stream (+ wait_stream, event, record_stream)", per_call_us(tensors, args.steps, side_copy)))
    rows.append(("t.to('cpu', non_blocking=True)",
                 per_call_us(tensors, args.steps, lambda i, t: t.to("cpu", non_blocking=True))))
    snapshotter = Snapshotter(pool_bytes=nbytes * len(tensors) * 2)
    held = []

    def take(i, t):
        held.append(snapshotter.take(t))

    per_call_us(tensors, 1, take)  # arena pinned here
    for snapshot in held:
        snapshot.wait()
        snapshot.release()
    held.clear()

    def take_and_release(i, t):
        take(i, t)
        if len(held) == len(tensors):
            torch.cuda.synchronize()
            for snapshot in held:
                snapshot.release()
            held.clear()

    rows.append(("Snapshotter.take (no writer)", per_call_us(tensors, args.steps, take_and_release)))
    with tempfile.TemporaryDirectory() as scratch:
        dumper = Dumper()
        dumper.configure(dir=os.path.join(scratch, "run"), run_id="diag",
                         queue_bytes=nbytes * len(tensors) * (args.steps + 2))
        for index, tensor in enumerate(tensors):
            dumper.dump("warm", tensor, index=index)
        dumper.flush()
        rows.append(("dumper.dump (writer running)",
                     per_call_us(tensors, args.steps, lambda i, t: dumper.dump("t", t, index=i))))
        dumper.close()

    print(f"# dump call diagnostics, {time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}; {args.tensors} x {args.mb} MB bf16 x {args.steps} steps")
    print("| variant | median us/call | mean us/call |")
    print("|---|---|---|")
    for label, (median, mean) in rows:
        print(f"| {label} | {median:.1f} | {mean:.1f} |")

    cycles = sleep_cycles_per_ms()
    event = torch.cuda.Event()
    torch.cuda._sleep(int(cycles * 300))
    event.record()
    waiter = threading.Thread(target=event.synchronize)
    t0 = time.perf_counter()
    waiter.start()
    spins = 0
    while waiter.is_alive():
        spins += 1
    print(f"\n_sleep: {cycles:.0f} cycles per ms; while another thread waited {1e3 * (time.perf_counter() - t0):.0f} ms "
          f"in Event.synchronize(), the main thread ran {spins} Python loop iterations (0: the GIL was held)")


if __name__ == "__main__":
    main()
