"""``dumpcmp demo``: one seed bug caught, a healthy pass, and a bad scenario name."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from comparator.cli import app
from examples.demo import DEFAULT_SCENARIO, SCENARIOS, DemoConfig, DemoOptionError
from examples.moe_engine.config import BUG_NAMES


def invoke(*args: str, cwd=None, monkeypatch=None):
    if cwd is not None:
        monkeypatch.chdir(cwd)  # the demo needs no checkout around it
    return CliRunner().invoke(app, ["demo", *args], env={"COLUMNS": "200"})


def test_every_engine_bug_has_a_scenario_and_the_default_is_seed_1():
    assert set(BUG_NAMES) < set(SCENARIOS) and {"none", "dp_attention_padding"} < set(SCENARIOS)
    assert SCENARIOS[DEFAULT_SCENARIO].seed == 1


def test_bad_bug_name_exits_2_and_lists_the_valid_ones():
    result = invoke("--bug", "tripple_reduce")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "dumpcmp: error: unknown bug 'tripple_reduce'; valid: " + ", ".join(SCENARIOS))
    with pytest.raises(DemoOptionError):
        DemoConfig(bug="tripple_reduce")


@pytest.mark.slow
def test_default_demo_finds_seed_1_and_names_ep(tmp_path, monkeypatch):
    started = time.perf_counter()
    result = invoke("--keep", str(tmp_path / "runs"), cwd=tmp_path, monkeypatch=monkeypatch)
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "seed 1: ep_reduce_skipped_under_fusion" in out
    assert "--tp 2 --ep 2 --fusion --bug ep_reduce_skipped_under_fusion" in out
    assert "first divergence: moe_output of layer 1, step 0" in out
    assert "missing all-reduce over ep" in out
    assert "Found: as expected." in out
    assert f"dumpcmp compare {tmp_path / 'runs' / 'baseline'} {tmp_path / 'runs' / 'target'}" in out
    assert (tmp_path / "runs" / "target" / "run.json").is_file()
    assert seconds < 60, f"the demo took {seconds:.1f} s"


@pytest.mark.slow
def test_bug_none_passes_and_json_is_the_compare_report(tmp_path, monkeypatch):
    result = invoke("--bug", "none", "--format", "json", cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["aligner"] == "concat_steps" and report["first_divergence"] is None
    assert report["summary"]["failed"] == 0 and report["summary"]["passed"] == report["summary"]["total"] > 0
    assert {"moe_output", "dense_mlp_output", "logits"} <= {r["name"] for r in report["results"]}
    assert list(tmp_path.iterdir()) == []  # without --keep the runs are gone
