"""Runs of the example MoE engine dumped through ``dumpcmp run`` (the example preset), once per session.

Each run costs a few seconds of CPU, and several test modules use the same ones, so
they live under the session's base temp directory and are dumped on first use.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from tests.helpers.procs import clean_env

# name -> (mode, engine arguments); "base" is the demo's baseline (see demo_runs).
RUNS = {
    "ep2": ("tensor", "--ep 2"),
    "ep2_stats": ("stats", "--ep 2"),
    "bug_stats": ("stats", "--ep 2 --bug double_reduce"),
    "seed2": ("tensor", "--ep 2 --bug double_reduce"),
    "seed3": ("tensor", "--tp 2 --bug shared_expert_double_reduce"),
    "seed4": ("tensor", "--tp 2 --dense-tp --bug dense_tp_missing_reduce"),
    "dp_attention": ("tensor", "--tp 2 --ep 2 --dp-attention 2 --dense-tp"),  # seed 5's shape, healthy
    "bf16_base": ("tensor", "--dtype bfloat16 --seed 3"),
    "bf16_tp2_ep2": ("tensor", "--dtype bfloat16 --seed 3 --tp 2 --ep 2"),  # a benign routing flip at layer 2
}
DUMPCMP = [sys.executable, "-c", "from comparator.cli import main; main()"]


def dumpcmp(*args: str, cwd: str | Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the dumpcmp CLI in a fresh interpreter (as a user would)."""
    return subprocess.run([*DUMPCMP, *args], env=clean_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def demo_runs(root: Path) -> tuple[Path, Path]:
    """(baseline, target) of ``dumpcmp demo`` (seed 1: EP reduction skipped under fusion), kept under ``root``."""
    kept = root / "demo"
    if not (kept / "target" / "run.json").exists() or not (kept / "baseline" / "run.json").exists():
        proc = dumpcmp("demo", "--keep", str(kept), timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"dumpcmp demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return kept / "baseline", kept / "target"


def example_run(root: Path, name: str) -> Path:
    """The path of run ``name`` (see RUNS; "base" is the demo's baseline), dumping it first if needed."""
    if name == "base":
        return demo_runs(root)[0]
    path = root / name
    if not (path / "run.json").exists():
        mode, args = RUNS[name]
        proc = dumpcmp("run", "--mode", mode, "--patch", "example/moe_engine", "--dir", str(path), "--overwrite",
                       "--", sys.executable, "-m", "examples.moe_engine", *shlex.split(args))
        if proc.returncode != 0:
            raise AssertionError(f"dumping {name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return path


def example_runs(root: Path, names: list[str]) -> dict[str, Path]:
    """Several runs of RUNS (or "base"), the missing ones dumped two at a time."""
    from concurrent.futures import ThreadPoolExecutor

    example_run(root, "base")  # the demo: two runs at once already
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(example_run, root, name) for name in names}
        return {name: future.result() for name, future in futures.items()}


def example_runs_root(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.getbasetemp() / "example_runs"
    root.mkdir(exist_ok=True)
    return root


def dump_example(root: Path, name: str, args: str, *, mode: str = "tensor") -> Path:
    """Dump one example-engine run (engine arguments ``args``) into ``root/name``; fail loudly."""
    path = root / name
    proc = dumpcmp("run", "--mode", mode, "--patch", "example/moe_engine", "--dir", str(path), "--",
                   sys.executable, "-m", "examples.moe_engine", *shlex.split(args), timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"dumping {name} ({args}) failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return path


def dump_examples(root: Path, jobs: dict[str, str]) -> dict[str, Path]:
    """Dump several runs, two at a time (each mostly imports torch and forks: 2 cores stay busy)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(dump_example, root, name, args) for name, args in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def cached_example(root: Path, name: str, args: str) -> Path:
    """``dump_example`` once per session: later callers get the run already dumped under ``root``."""
    path = root / name
    return path if (path / "run.json").exists() else dump_example(root, name, args)
