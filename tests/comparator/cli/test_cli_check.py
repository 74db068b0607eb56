"""``dumpcmp check`` on the command line: exit codes, formats, bad input."""

from __future__ import annotations

import json

import pytest

from tests.helpers.example_runs import demo_runs, dumpcmp, example_run, example_runs_root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return example_runs_root(tmp_path_factory)


def test_seed1_target_exits_1_and_names_tensor_and_axis(root):
    _, target = demo_runs(root)
    proc = dumpcmp("check", str(target))
    assert proc.returncode == 1, proc.stderr
    assert "moe_output[layer=1]@step0 is declared replicated over ep" in proc.stdout
    data = json.loads(dumpcmp("check", str(target), "--format", "json").stdout)
    assert data["first_finding"]["name"] == "moe_output" and data["first_finding"]["axis"] == "ep"


def test_healthy_run_exits_0(root, tmp_path):
    run = example_run(root, "ep2")
    out = tmp_path / "check.xml"
    proc = dumpcmp("check", str(run), "--format", "junit", "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'failures="0"' in out.read_text()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = dumpcmp("check", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("dumpcmp: error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_compare_check_target_reports_the_checks_in_json_and_junit(root):
    baseline, target = demo_runs(root)
    proc = dumpcmp("compare", str(baseline), str(target), "--check-target", "--format", "json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["first_divergence"]["name"] == "moe_output"  # compare's own report is unchanged
    assert data["target_checks"]["first_finding"]["axis"] == "ep"
    junit = dumpcmp("compare", str(baseline), str(target), "--check-target", "--format", "junit").stdout
    assert 'name="dumpcmp check (target)' in junit


def test_compare_check_target_on_a_healthy_pair_exits_0(root):
    proc = dumpcmp("compare", str(example_run(root, "base")), str(example_run(root, "ep2")), "--check-target")
    assert proc.returncode == 0, proc.stdout
    assert "clean" in proc.stdout
