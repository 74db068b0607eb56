"""Benchmark ``dumpcmp compare`` against the time to just read the same bytes once.

    python benchmarks/bench_compare.py [--tensors 384] [--mb 2] [--dir DIR] [--jobs 1] [--before OLD_TREE]

Writes two runs (baseline and target = baseline + small noise, so every tensor is
really compared: equal checksums would let compare skip the data) through the
dumper in a subprocess, then, in one benchmark run:

1. reads every data file of both runs once (plain ``readinto``) and times it;
2. runs ``dumpcmp compare BASE TARGET --format json`` as a child process and
   records its wall time and peak RSS (``os.wait4``'s ``ru_maxrss``).

Both are measured with a warm page cache (a warm-up read comes first), so the
comparison is against memory bandwidth, not the disk. Prints one JSON object;
results are recorded in docs/performance.md ("compare").

``--before OLD_TREE`` (another source tree, e.g. ``git archive`` of an older commit
unpacked somewhere): the runs are written by that tree's dumper (so that both trees
read them), and each round times the read, this tree's compare and the old tree's
compare one after the other (A/B/A/B), reporting the median and range of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WRITER = r"""
import os, torch
from dumper import dumper
tensors, elements = int(os.environ["BENCH_TENSORS"]), int(os.environ["BENCH_ELEMENTS"])
noise = float(os.environ["BENCH_NOISE"])
generator = torch.Generator().manual_seed(0)
noise_generator = torch.Generator().manual_seed(1)
tokens = 512
for index in range(tensors):
    value = torch.randn(tokens, elements // tokens, generator=generator)
    if noise:
        value += noise * torch.randn(value.shape, generator=noise_generator)
    with dumper.tags(layer=index // 8):
        dumper.dump(f"tensor_{index % 8}", value, dims="t h")
    if index % 64 == 63:
        dumper.step()
"""


def write_run(path: Path, *, tensors: int, elements: int, noise: float, tree: Path = REPO) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUMPCMP_")}
    env.update(DUMPCMP_DIR=str(path), BENCH_TENSORS=str(tensors), BENCH_ELEMENTS=str(elements), BENCH_NOISE=str(noise),
               PYTHONPATH=str(tree))
    subprocess.run([sys.executable, "-c", WRITER], env=env, check=True, cwd=tree)  # -c: the working directory comes first


def read_once(paths: list[Path]) -> tuple[float, int]:
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    total = 0
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while True:
                count = handle.readinto(view)
                if not count:
                    break
                total += count
    return time.perf_counter() - start, total


def timed_child(command: list[str], tree: Path = REPO) -> tuple[float, int, int, float]:
    """(wall seconds, peak RSS bytes, exit code, CPU seconds) of one child process running ``tree``'s code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUMPCMP_")}
    env["PYTHONPATH"] = str(tree)
    start = time.perf_counter()
    # NOTE: run from the tree itself: ``python -m`` puts the working directory first on the path.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tree)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode not in (0, 1, 3):
        raise SystemExit(f"compare failed ({process.returncode}): {stderr}")
    return wall, usage.ru_maxrss * 1024, process.returncode, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=384)
    parser.add_argument("--mb", type=float, default=2.0, help="size of one tensor in MB (fp32)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the runs (default: a temp dir, removed)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", type=Path, default=None, help="another source tree, timed in alternation")
    args = parser.parse_args()
    elements = int(args.mb * (1 << 20)) // 4
    root = (args.dir or Path(tempfile.mkdtemp(prefix="bench-compare-"))).resolve()
    try:
        baseline, target = root / "baseline", root / "target"
        for path in (baseline, target):
            shutil.rmtree(path, ignore_errors=True)
        write_start = time.perf_counter()
        writer = args.before or REPO
        write_run(baseline, tensors=args.tensors, elements=elements, noise=0.0, tree=writer)
        write_run(target, tensors=args.tensors, elements=elements, noise=1e-4, tree=writer)
        write_seconds = time.perf_counter() - write_start
        files = sorted(baseline.rglob("*.safetensors")) + sorted(target.rglob("*.safetensors"))
        read_once(files)  # warm the page cache
        reads, compares, rss, cpu, startups = [], [], [], [], []
        before: list[tuple[float, int, int, float]] = []
        launcher = [sys.executable, "-m", "comparator.cli"]
        command = launcher + ["compare", str(baseline), str(target), "--format", "json", "--jobs", str(args.jobs)]
        code = None
        for _ in range(args.repeat):
            seconds, total = read_once(files)
            reads.append(seconds)
            wall, peak, code, seconds_cpu = timed_child(command)
            compares.append(wall)
            rss.append(peak)
            cpu.append(seconds_cpu)
            if args.before is not None:
                before.append(timed_child(command, args.before))
            # The same command comparing nothing: start-up (imports, index reading).
            startups.append(timed_child(command + ["--names", "^$"])[0])
        read_seconds = min(reads)
        compare_seconds = min(compares)
        result = {
            "tensors": args.tensors,
            "tensor_mb": args.mb,
            "bytes_read": total,
            "write_seconds": round(write_seconds, 2),
            "read_seconds": round(read_seconds, 3),
            "read_gb_per_s": round(total / read_seconds / 1e9, 2),
            "compare_seconds": round(compare_seconds, 3),
            "compare_seconds_all": [round(c, 3) for c in compares],
            "compare_seconds_median": round(statistics.median(compares), 3),
            "before_seconds_all": [round(b[0], 3) for b in before],
            "before_seconds_median": round(statistics.median(b[0] for b in before), 3) if before else None,
            "before_peak_rss_mb": round(max(b[1] for b in before) / (1 << 20), 1) if before else None,
            "read_seconds_median": round(statistics.median(reads), 3),
            "compare_cpu_seconds": round(min(cpu), 3),
            "startup_seconds": round(min(startups), 3),
            "target_seconds": round(3 * read_seconds + 0.5, 3),  # issue 17: 3x the read of both runs + 0.5 s
            "peak_rss_mb": round(max(rss) / (1 << 20), 1),
            "jobs": args.jobs,
            "exit_code": code,
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        print(json.dumps(result, indent=1))
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
