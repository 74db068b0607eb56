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

# name -> (mode, engine arguments)
RUNS = {
    "base": ("tensor", ""),  # one process: the baseline
    "bug": ("tensor", "--ep 2 --bug double_reduce"),  # seed 2: moe_output of layer 1 = 2 x baseline
    "ep2": ("tensor", "--ep 2"),
    "ep2_stats": ("stats", "--ep 2"),
    "bug_stats": ("stats", "--ep 2 --bug double_reduce"),
}
DUMPCMP = [sys.executable, "-c", "from comparator.cli import main; main()"]


def dumpcmp(*args: str, cwd: str | Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the dumpcmp CLI in a fresh interpreter (as a user would)."""
    return subprocess.run([*DUMPCMP, *args], env=clean_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def example_run(root: Path, name: str) -> Path:
    """The path of run ``name`` (see RUNS), dumping it first if this session has not."""
    path = root / name
    if not (path / "run.json").exists():
        mode, args = RUNS[name]
        proc = dumpcmp("run", "--mode", mode, "--patch", "example/moe_engine", "--dir", str(path), "--overwrite",
                       "--", sys.executable, "-m", "examples.moe_engine", *shlex.split(args))
        if proc.returncode != 0:
            raise AssertionError(f"dumping {name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return path


def example_runs_root(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.getbasetemp() / "example_runs"
    root.mkdir(exist_ok=True)
    return root
