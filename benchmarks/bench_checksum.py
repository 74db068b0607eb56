"""Checksum candidates for the dumper's writer: throughput, and whether each lets other threads run.

For each buffer size, rounds are interleaved (every candidate once per round, in a
rotating order, after a warm-up round) and the median and spread of MB/s are printed.
GIL: a second Python thread notes the time of each of its loop iterations during one
checksum call over a large buffer; the share of 1 ms slices of the call in which it
ran (about 1: the checksum released the GIL, if a core was free; 0: it held it).

    python benchmarks/bench_checksum.py [--rounds 7] [--sizes-kb 64,1024,16384]

Candidates that are not installed are listed as missing (the run format's choice is
``dumper.checksums.DEFAULT``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import zlib
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def candidates() -> dict[str, Callable[[memoryview], object]]:
    found: dict[str, Callable[[memoryview], object]] = {"zlib.crc32": zlib.crc32}
    try:
        import xxhash

        found["xxhash.xxh3_64"] = xxhash.xxh3_64_intdigest
        found["xxhash.xxh3_128"] = xxhash.xxh3_128_intdigest
    except ImportError:
        print("# xxhash: not installed", file=sys.stderr)
    try:
        import google_crc32c

        import numpy

        def crc32c(data: memoryview) -> int:
            # NOTE: its argument must be a read-only buffer without a release hook ("y#"):
            # a read-only numpy view of the bytes, no copy.
            view = numpy.frombuffer(data, dtype=numpy.uint8)
            view.flags.writeable = False
            return google_crc32c.value(view)

        found["google_crc32c"] = crc32c
    except ImportError:
        print("# google-crc32c: not installed", file=sys.stderr)
    return found


def rate(function: Callable[[memoryview], object], data: memoryview, min_seconds: float) -> float:
    """MB/s of ``function`` over ``data``, repeated for at least ``min_seconds``."""
    count = 0
    start = time.perf_counter()
    while True:
        function(data)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return count * len(data) / elapsed / 1e6


class Stamper:
    """A Python thread noting the time of each of its loop iterations: it runs only while it holds the GIL."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.running = True
        self.thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        clock, stamps = time.perf_counter, self.stamps
        while self.running:
            stamps.append(clock())


def gil_share(function: Callable[[memoryview], object], data: memoryview, calls: int = 5) -> float:
    """Share of 1 ms slices, during single calls of ``function``, in which another Python thread ran.

    NOTE: a C function holding the GIL cannot be preempted: the other thread runs at
    most around the call's start and end (switch intervals, scheduling delays on a
    busy machine), so 10% of the call and 2 ms at each end are left out, and the rest
    shows no progress at all (0).
    One that releases the GIL leaves the other thread running in every slice where
    the machine gives it a core (about 1 on an idle machine).
    """
    stamper = Stamper()
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    stamper.thread.start()
    shares = []
    try:
        for _ in range(calls):
            time.sleep(0.01)
            t0 = time.perf_counter()
            function(data)
            t1 = time.perf_counter()
            margin = 0.002 + 0.1 * (t1 - t0)
            begin, end = t0 + margin, t1 - margin
            slices = max(1, int((end - begin) / 0.001))
            ran = {int((stamp - begin) / 0.001) for stamp in stamper.stamps if begin <= stamp < end}
            shares.append(len(ran) / slices)
            stamper.stamps.clear()
    finally:
        stamper.running = False
        stamper.thread.join()
        sys.setswitchinterval(previous)
    return statistics.median(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes-kb", default="64,1024,16384")
    parser.add_argument("--gil-mb", type=int, default=512, help="buffer of the GIL test (one call at a time)")
    parser.add_argument("--seconds", type=float, default=0.15, help="minimum time of one measurement")
    args = parser.parse_args()
    sizes = [int(size) << 10 for size in args.sizes_kb.split(",")]
    found = candidates()
    names = list(found)
    buffers = {size: memoryview(os.urandom(size)) for size in sizes}
    # Same checksum of the same bytes every time (no candidate cheats on repeats).
    for data in buffers.values():
        for function in found.values():
            assert function(data) == function(data)
    results: dict[tuple[str, int], list[float]] = {(name, size): [] for name in names for size in sizes}
    for round_number in range(args.rounds + 1):
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for size in sizes:
            for name in order:
                value = rate(found[name], buffers[size], args.seconds)
                if round_number:  # round 0 warms caches and the CPU clock
                    results[(name, size)].append(value)
    large = memoryview(bytes(args.gil_mb << 20))
    shares = {name: gil_share(found[name], large) for name in names}
    # A control that holds the GIL throughout (a copy of the buffer into a new bytes object).
    control = gil_share(lambda data: data.tobytes(), large)

    print(f"# checksum candidates, {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}; {args.rounds} interleaved rounds")
    print()
    header = " | ".join(f"{size >> 10} KB MB/s median (min-max)" for size in sizes)
    print(f"| checksum | {header} | share of 1 ms slices in which another thread ran, during one call ({args.gil_mb} MB) |")
    print("|---|" + "---|" * len(sizes) + "---|")
    for name in names:
        cells = []
        for size in sizes:
            values = results[(name, size)]
            cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
        print(f"| {name} | " + " | ".join(cells) + f" | {shares[name]:.2f} |")
    print(f"\ncontrol, memoryview.tobytes() (holds the GIL): the share {control:.2f}")


if __name__ == "__main__":
    main()
