"""Online divergence on the example engine: ``dumpcmp run --against BASELINE``.

One stats baseline of the healthy ``--ep 2`` run; a healthy target writes stats only;
the double-reduce seed bug escalates at the MoE output of layer 1, step 0, and writes
tensor data for the escalation window only. The disk saved against a full tensor run
of the same buggy engine is printed (docs/performance.md records it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from comparator import compare
from dumper.reader import open_run
from tests.helpers.procs import REPO, clean_env

pytestmark = pytest.mark.slow

DUMPCMP = [sys.executable, "-c", "from comparator.cli import main; main()"]
PRESET = str(REPO / "patches" / "presets" / "example" / "moe_engine.yaml")
ENGINE = "--ep 2 --steps 9"  # 10 steps: prefill and 9 decode steps
BUG = "--bug double_reduce"
ESCALATE_STEPS = 2


def dump(run_dir: Path, engine_args: str, *options: str) -> Path:
    result = subprocess.run(
        [*DUMPCMP, "run", "--patch", PRESET, "--dir", str(run_dir), *options, "--",
         sys.executable, "-m", "examples.moe_engine", *engine_args.split()],
        env=clean_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"{run_dir.name}\n{result.stdout}\n{result.stderr}"
    return run_dir


def disk_bytes(run_dir: Path) -> int:
    return sum(path.stat().st_size for path in run_dir.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("online")
    baseline = dump(root / "baseline", ENGINE, "--mode", "stats")
    against = ("--against", str(baseline), "--escalate-steps", str(ESCALATE_STEPS))
    jobs = {
        "healthy": (ENGINE, against),
        "bug": (f"{ENGINE} {BUG}", against),
        "bug_full": (f"{ENGINE} {BUG}", ()),
    }
    # NOTE: two at a time: each run mostly imports torch and forks, so 2 cores stay busy.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(dump, root / name, args, *options) for name, (args, options) in jobs.items()}
        return {"baseline": baseline, **{name: future.result() for name, future in futures.items()}}


def rank_infos(run_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(run_dir.glob("rank-*/rank.json"))]


def test_healthy_target_writes_stats_only(runs):
    assert not list(runs["healthy"].rglob("data-*.safetensors"))
    infos = rank_infos(runs["healthy"])
    assert len(infos) == 2
    for info in infos:
        assert info["escalation"] is None
        assert info["online"]["compared"] == info["records"] > 100 and info["online"]["not_compared"] == 0


def test_double_reduce_escalates_at_layer_1_step_0_for_the_window_only(runs):
    for info in rank_infos(runs["bug"]):
        escalation = info["escalation"]
        assert (escalation["step"], escalation["name"], escalation["tags"]) == (0, "moe_output", {"layer": 1})
        assert "ratio 2" in escalation["reason"]
        assert escalation["until_step"] == ESCALATE_STEPS - 1
    with open_run(runs["bug"]) as run:
        for rank in (0, 1):
            records = [r for r in run.records if r.rank == rank]
            first = next(r for r in records if r.file is not None)
            assert (first.name, first.step, first.tags) == ("moe_output", 0, {"layer": 1})
            with_data = [r for r in records if r.file is not None]
            assert {r.step for r in with_data} == set(range(ESCALATE_STEPS))
            # Everything from the divergent record through the window's end, nothing else.
            assert [r.seq for r in with_data] == [r.seq for r in records
                                                  if r.seq >= first.seq and r.step < ESCALATE_STEPS]
    # The comparator finds the same first divergence from the online run.
    report = compare(runs["baseline"], runs["bug"])
    first = report.first_divergence
    assert (first.name, first.step, first.tags) == ("moe_output", 0, {"layer": 1})


def test_disk_saved(runs):
    online, full = disk_bytes(runs["bug"]), disk_bytes(runs["bug_full"])
    healthy = disk_bytes(runs["healthy"])
    data = lambda run: sum(p.stat().st_size for p in run.rglob("data-*.safetensors"))  # noqa: E731
    print(f"\nonline disk: healthy {healthy} B, double_reduce {online} B (data {data(runs['bug'])} B) "
          f"vs full tensor run {full} B (data {data(runs['bug_full'])} B): {1 - online / full:.0%} saved")
    assert healthy < online < full
    assert data(runs["bug"]) < 0.35 * data(runs["bug_full"])  # 2 of 10 steps, minus what passed at step 0
