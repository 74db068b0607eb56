"""Sweep the example engine over weight seeds, dtypes and layouts; compare each run to its baseline.

    python -m tests.tools.example_sweep DIR --seeds 13,14 [--jobs 2]

For each seed and dtype (float32, bfloat16) it dumps a 3-layer baseline and one target
per entry of TARGETS through ``dumpcmp run``, compares each target with the baseline
(bf16 with examples/moe_engine/thresholds_bf16.yaml) and prints one line: exit code,
aligner, failures, first divergence and its hint. Healthy targets should exit 0; each
bug should be found at its tensor at step 0 with its hint. Runs already in DIR are kept.

It is the check behind "the verdicts hold on other seeds, dtypes and layouts": the
end-to-end tests pin a few seeds, this tries more (minutes of CPU per seed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.helpers.example_runs import cached_example

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from comparator.cli import main; main()"]
DTYPES = ("float32", "bfloat16")
TARGETS = {
    "tp2_ep2": "--tp 2 --ep 2",
    "tp2_ep2_one_by_one": "--tp 2 --ep 2 --max-batch 1",
    "ep2_in_twos": "--ep 2 --max-batch 2",
    "dp2": "--tp 2 --ep 2 --dp-attention 2 --dense-tp --dense-layers 1",
    "compile": "--compile",
    "compile_tp2_ep2": "--compile --tp 2 --ep 2",
    "nondeterministic_tp2_ep2": "--nondeterministic --tp 2 --ep 2",
    "seed1": "--tp 2 --ep 2 --fusion --bug ep_reduce_skipped_under_fusion",
    "seed2": "--ep 2 --bug double_reduce",
    "seed3": "--tp 2 --bug shared_expert_double_reduce",
    "seed4": "--tp 2 --dense-tp --dense-layers 1 --bug dense_tp_missing_reduce",
    "dp2_seed4": "--tp 2 --ep 2 --dp-attention 2 --dense-tp --dense-layers 1 --bug dense_tp_missing_reduce",
    "dp2_seed2": "--tp 2 --ep 2 --dp-attention 2 --bug double_reduce",
}


def compare_line(root: Path, seed: int, dtype: str, target: str) -> str:
    report_path = root / f"{seed}_{dtype}_{target}.json"
    extra = ["--thresholds", str(REPO / "examples/moe_engine/thresholds_bf16.yaml")] if dtype == "bfloat16" else []
    proc = subprocess.run([*CLI, "compare", str(root / f"{seed}_{dtype}_base"), str(root / f"{seed}_{dtype}_{target}"),
                           "-f", "json", "-o", str(report_path), *extra], cwd=REPO, capture_output=True, text=True)
    if not report_path.exists():
        return f"{seed} {dtype:8s} {target:26s} no report: {proc.stderr[-300:]}"
    report = json.loads(report_path.read_text())
    first = report.get("first_divergence") or {}
    failed = sum(1 for r in report["results"] if r["status"] == "fail" and not r.get("allowed"))
    where = f"{first['name']}{first['tags']}@{first['step']}" if first else "-"
    return (f"{seed} {dtype:8s} {target:26s} exit={report['exit_code']} aligner={report['aligner']:12s} "
            f"failed={failed:3d} first={where} hint={(first.get('hint') or '')[:80]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="where the runs and reports go")
    parser.add_argument("--seeds", default="13,14", help="weight seeds, comma-separated")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="runs dumped at once")
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    jobs = {}
    for seed, dtype in itertools.product(seeds, DTYPES):
        common = f"--seed {seed} --dtype {dtype} --layers 3"
        jobs[f"{seed}_{dtype}_base"] = common
        jobs.update({f"{seed}_{dtype}_{name}": f"{common} {extra}" for name, extra in TARGETS.items()})
    args.dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda item: cached_example(args.dir, *item), jobs.items()))
    for seed, dtype in itertools.product(seeds, DTYPES):
        for target in TARGETS:
            print(compare_line(args.dir, seed, dtype, target), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
