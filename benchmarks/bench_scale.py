"""``dumpcmp compare`` time and peak memory against rank count and against record count.

    python benchmarks/bench_scale.py ranks   [--dir DIR] [--rounds 1]
    python benchmarks/bench_scale.py records [--dir DIR] [--rounds 1] [--max 1000000]

``ranks``: the same logical tensors (4 layers x 2 steps x 6 tensors of a MoE layer, each
16 tokens x 256 float32 values = 16 KiB logical) dumped in stats mode by 8, 32, 64, 128
and 256 ranks (tp8; tp8 ep4; tp8 ep8; tp8 ep8 dp2; tp8 ep8 dp4), compared with their
1-rank baseline. ``records``: tp8, 60 layers x 20 tensors per step, 1, 10 and 100 steps
(about 10k, 100k and 1M target records; tiny tensors).

Runs are written by benchmarks/synth_run.py. Each compare is a child process
(``--format json --verbose``); its wall time and peak RSS (``os.wait4``) are recorded,
and the reader's and planner's own figures are taken from its ``--verbose`` log lines.
Prints one JSON line per point; results are in docs/performance.md ("many ranks").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RANK_LAYOUTS = ((8, 1, 1), (8, 4, 1), (8, 8, 1), (8, 8, 2), (8, 8, 4))
RECORD_STEPS = (1, 10, 100)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUMPCMP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def synth(out: Path, *args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "synth_run.py"), str(out), *args], env=_env(), check=True,
                   stdout=subprocess.DEVNULL)


def timed_compare(out: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "comparator.cli", "compare", str(out / "baseline"), str(out / "target"),
               "--format", "json", "--output", str(out / "report.json"), "--verbose"]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    read = sum(float(s) for s in re.findall(r"read \S+: \d+ records in ([0-9.]+) s", stderr))
    grouped = sum(float(s) for s in re.findall(r"plan: grouped records in ([0-9.]+) s", stderr))
    planned = sum(float(s) for s in re.findall(r"plan: \d+ work items in ([0-9.]+) s", stderr))
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "read_s": round(read, 2),
            "plan_s": round(grouped + planned, 2), "exit": os.waitstatus_to_exitcode(status)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("ranks", "records"))
    parser.add_argument("--dir", default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max", type=int, default=1_000_000, help="skip record points above this many records")
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="dumpcmp-scale-"))
    points: list[tuple[str, list[str], int]] = []
    if args.what == "ranks":
        for tp, ep, dp in RANK_LAYOUTS:
            points.append((f"tp{tp}-ep{ep}-dp{dp}", ["--tp", str(tp), "--ep", str(ep), "--dp", str(dp), "--layers", "4",
                                                     "--steps", "2", "--tokens", "16", "--hidden", "256"], tp * ep * dp))
    else:
        for steps in RECORD_STEPS:
            records = steps * 60 * 20 * 8
            if records <= args.max:
                points.append((f"steps{steps}", ["--tp", "8", "--layers", "60", "--steps", str(steps), "--extra-tensors",
                                                 "14", "--tokens", "4", "--hidden", "8"], records))
    for label, synth_args, size in points:
        out = base / label
        if not (out / "target").exists():
            synth(out, *synth_args)
        for round_number in range(args.rounds):
            figures = timed_compare(out)
            print(json.dumps({"point": label, "ranks_or_records": size, "round": round_number, **figures}), flush=True)


if __name__ == "__main__":
    main()
