"""``dumpcmp ls`` wall time and peak memory on 100k- and 1M-record runs, rounds interleaved.

    python benchmarks/bench_ls.py [--dir DIR] [--records 100000,1000000] [--rounds 3]
                                  [--before OLD_TREE] [--format json|table]

Runs are written by benchmarks/synth_run.py (tp8, 60 layers x 20 tensors a step, 10 or
100 steps: 96,000 or 960,000 target records; with the index-summary.json a closing rank
writes). Each round times, one after the other (A/B/A/B: drift on a shared machine
falls on every variant alike), ``python -m comparator.cli ls TARGET --format F`` as a
child process (wall time and peak RSS from ``os.wait4``) for each variant:

- ``after``: this tree, the run as written (summaries read);
- ``after, no summary``: this tree, the same index files without their summaries (a run
  written before them: the index lines are read);
- ``before`` (with ``--before``): another source tree, e.g. ``git archive`` of an older
  commit unpacked somewhere, on the run as written.

Prints one JSON line per point and variant: median, min and max over the rounds, and
the machine's load average. Results are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = {100_000: 10, 1_000_000: 100}  # 60 layers x 20 tensors x 8 ranks a step


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUMPCMP_")}
    env["PYTHONPATH"] = str(tree)
    return env


def write_runs(out: Path, steps: int) -> None:
    if (out / "target" / "run.json").exists():
        return
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "synth_run.py"), str(out), "--tp", "8", "--layers", "60",
                    "--steps", str(steps), "--extra-tensors", "14", "--tokens", "4", "--hidden", "8", "--no-baseline"],
                   env=_env(REPO), check=True, stdout=subprocess.DEVNULL)


def without_summaries(run: Path, out: Path) -> Path:
    """The run's files without index-summary.json: index files hard-linked (no copy of the bytes)."""
    if out.exists():
        return out
    for path in run.rglob("*"):
        if path.is_file() and path.name != "index-summary.json":
            target = out / path.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    return out


def timed_ls(tree: Path, run: Path, fmt: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one ``ls`` child."""
    start = time.perf_counter()
    # NOTE: run from the tree itself: ``python -m`` puts the working directory first on the path.
    process = subprocess.Popen([sys.executable, "-m", "comparator.cli", "ls", str(run), "--format", fmt], env=_env(tree),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ls {run} failed with {os.waitstatus_to_exitcode(status)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/dumpcmp-bench-ls"))
    parser.add_argument("--records", default="100000,1000000", help="comma-separated: 100000 and/or 1000000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, default=None, help="another source tree to time the same way")
    parser.add_argument("--format", default="json", choices=("json", "table"))
    args = parser.parse_args()
    for records in (int(r) for r in args.records.split(",")):
        point = args.dir.resolve() / f"records{records}"
        write_runs(point, STEPS[records])
        run = point / "target"
        variants = [("after", REPO, run), ("after, no summary", REPO, without_summaries(run, point / "no-summary"))]
        if args.before is not None:
            variants.insert(0, ("before", args.before, run))
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
        for _ in range(args.rounds):
            for name, tree, path in variants:
                figures[name].append(timed_ls(tree, path, args.format))
        for name, found in figures.items():
            walls, peaks = [w for w, _ in found], [p for _, p in found]
            print(json.dumps({
                "records": records, "variant": name, "format": args.format, "rounds": args.rounds,
                "wall_s": {"median": round(statistics.median(walls), 2), "min": round(min(walls), 2),
                           "max": round(max(walls), 2)},
                "peak_rss_mb": round(max(peaks), 1), "load_average": [round(x, 1) for x in os.getloadavg()],
            }), flush=True)


if __name__ == "__main__":
    main()
