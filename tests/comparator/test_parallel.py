"""``--jobs 1`` and ``--jobs 2`` give identical reports (comparator/parallel.py, comparator/execute.py).

Both paths build their executor with one factory (``make_executor``); these tests run
the scenario matrix both ways and compare the JSON reports whole: the toy TP runs of
tests/comparator/conftest.py, and the example engine's runs (tests/helpers/example_runs.py):
healthy, each seed bug, stats mode, a token aligner with ``--aligner-meta``, bf16 routing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from comparator import compare
from comparator.report.json import report_to_json
from tests.helpers.example_runs import example_runs, example_runs_root
from tests.helpers.procs import REPO

pytestmark = pytest.mark.slow

EXAMPLE_RUNS = ["ep2", "ep2_stats", "bug_stats", "seed2", "seed3", "seed4", "dp_attention", "bf16_base", "bf16_tp2_ep2"]
BF16_THRESHOLDS = str(REPO / "examples" / "moe_engine" / "thresholds_bf16.yaml")
RENAMED_META = "dp_rank_tokens"

# name -> (baseline, target, compare options); "toy:" runs come from the comparator's conftest.
SCENARIOS: dict[str, tuple[str, str, dict]] = {
    "toy_tp2_healthy": ("toy:tp1", "toy:tp2", {}),
    "toy_tp4_healthy": ("toy:tp1", "toy:tp4", {}),
    "toy_scale2": ("toy:tp1", "toy:tp1_scale2", {}),
    "toy_missing_allreduce": ("toy:tp1", "toy:tp2_missing_allreduce", {}),
    "healthy_ep2": ("base", "ep2", {}),
    "seed1": ("base", "demo_target", {}),
    "seed2": ("base", "seed2", {}),
    "seed3": ("base", "seed3", {}),
    "seed4": ("base", "seed4", {}),
    "seed5_without_aligner": ("base", "dp_attention", {"aligner": "none"}),
    "seed5_concat_steps": ("base", "dp_attention", {"aligner": "concat_steps"}),
    "aligner_meta": ("renamed:base", "renamed:dp_attention",
                     {"aligner": "concat_steps", "aligner_metadata": f"num_tokens_per_dp_rank={RENAMED_META}"}),
    "stats_against_tensor": ("base", "bug_stats", {}),
    "stats_same_layout": ("ep2", "ep2_stats", {}),
    "bf16_routing": ("bf16_base", "bf16_tp2_ep2", {"thresholds": BF16_THRESHOLDS}),
}


def rename_metadata(run: Path, copy: Path) -> Path:
    """A copy of ``run`` whose num_tokens_per_dp_rank dumps are named RENAMED_META instead."""
    if not (copy / "run.json").exists():
        shutil.copytree(run, copy)
        for index in copy.glob("rank-*/index.jsonl"):
            records = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
            for record in records:
                if record["name"] == "num_tokens_per_dp_rank":
                    record["name"] = RENAMED_META
            index.write_text("".join(json.dumps(record) + "\n" for record in records))
    return copy


@pytest.fixture(scope="module")
def paths(tmp_path_factory, runs) -> dict[str, Path]:
    root = example_runs_root(tmp_path_factory)
    found = example_runs(root, EXAMPLE_RUNS)
    found["base"] = root / "demo" / "baseline"
    found["demo_target"] = root / "demo" / "target"
    found.update({f"toy:{name}": path for name, path in runs.items()})
    renamed = tmp_path_factory.mktemp("renamed")
    for name in ("base", "dp_attention"):
        found[f"renamed:{name}"] = rename_metadata(found[name], renamed / name)
    return found


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_jobs_1_and_jobs_2_give_identical_reports(paths, scenario):
    baseline, target, options = SCENARIOS[scenario]
    serial = compare(paths[baseline], paths[target], jobs=1, **options)
    parallel = compare(paths[baseline], paths[target], jobs=2, **options)
    assert serial.summary.total > 0
    assert report_to_json(parallel) == report_to_json(serial)


def test_the_scenarios_are_what_they_say(paths):
    """The matrix covers passes, failures with hints, stats-only and aligned comparisons."""
    def run(name: str):
        baseline, target, options = SCENARIOS[name]
        return compare(paths[baseline], paths[target], **options)

    assert run("healthy_ep2").exit_code == 0
    for seed in ("seed1", "seed2", "seed3", "seed4"):
        report = run(seed)
        assert report.exit_code == 1 and report.first_divergence.hint, seed
    unaligned = run("seed5_without_aligner")
    assert unaligned.exit_code == 1
    assert any("looks like padding, try --aligner concat_steps" in (r.hint or "") for r in unaligned.results)
    assert run("seed5_concat_steps").exit_code == 0
    renamed = run("aligner_meta")
    assert renamed.exit_code == 0
    counts = [r for r in renamed.results if r.name == RENAMED_META]
    assert counts and all(r.alignment.detail == "per-DP-rank counts compared as each step's real tokens" for r in counts)
    assert all(r.stats_only for r in run("stats_against_tensor").results)
    assert any(r.routing is not None and r.routing.benign for r in run("bf16_routing").results)


def test_jobs_2_aligns_with_the_configured_metadata_names(paths):
    """The workers' aligner reads --aligner-meta too (it used to fall back to the default names)."""
    baseline, target, options = SCENARIOS["aligner_meta"]
    report = compare(paths[baseline], paths[target], jobs=2, **options)
    counts = [r for r in report.results if r.name == RENAMED_META]
    assert counts and all(r.status == "pass" for r in counts), [(r.label, r.reason) for r in counts]
