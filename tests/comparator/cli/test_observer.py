"""``dumpcmp run --verify-observer`` (comparator/cli/observer.py): dumping off vs on, recorded in run.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from comparator.cli.observer import ObserverCheck, OutputDiff, compare_files, record_check
from tests.helpers.procs import REPO, clean_env

DUMPCMP = [sys.executable, "-c", "from comparator.cli import main; main()"]
PRESET = str(REPO / "patches" / "presets" / "example" / "moe_engine.yaml")
TOY = str(REPO / "tests" / "helpers" / "observer_toy.py")


def dumpcmp_run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*DUMPCMP, "run", *args], env=clean_env(OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def observer_check(run_dir) -> dict:
    return json.loads((run_dir / "run.json").read_text())["observer_check"]


# ------------------------------------------------------------------------ library
def test_compare_files_tensor_by_tensor(tmp_path):
    x = torch.arange(6.0)
    save_file({"a": x, "b": x.clone()}, str(tmp_path / "off.safetensors"))
    save_file({"a": x.clone(), "b": x * 2, "c": x.clone()}, str(tmp_path / "on.safetensors"))
    a, b, c = compare_files(str(tmp_path / "off.safetensors"), str(tmp_path / "on.safetensors"))
    assert a.identical and a.max_abs == 0
    assert not b.identical and b.rel_diff == pytest.approx(0.2)
    assert not c.identical and c.problem == "only with dumping on"


def test_compare_files_bytes(tmp_path):
    (tmp_path / "off.txt").write_text("42\n")
    (tmp_path / "on.txt").write_text("43\n")
    (diff,) = compare_files(str(tmp_path / "off.txt"), str(tmp_path / "on.txt"))
    assert not diff.identical


def test_record_check_writes_run_json_and_check_json(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": 1, "run_id": "x"}))
    (tmp_path / "observer").mkdir()
    check = ObserverCheck(changed=False, method="file", observed="out.bin", exit_codes={"dumping_on": 0, "reference": 0},
                          outputs=(OutputDiff(name="out.bin", identical=True),))
    record_check(str(tmp_path), check)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["run_id"] == "x" and info["observer_check"]["changed"] is False
    assert info["observer_check"]["summary"].startswith("observer check: no change")
    assert json.loads((tmp_path / "observer" / "check.json").read_text()) == info["observer_check"]
    assert check  # truthy: nothing changed


def test_observe_needs_verify_observer(tmp_path):
    result = dumpcmp_run("--dir", str(tmp_path / "r"), "--observe", "x", "--", sys.executable, "-c", "pass")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "dumpcmp: error: --observe and --observe-tensor need --verify-observer"


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_example_engine_logits_do_not_change(tmp_path):
    logits = tmp_path / "logits.safetensors"
    run_dir = tmp_path / "run"
    result = dumpcmp_run("--patch", PRESET, "--dir", str(run_dir), "--verify-observer", "--observe", str(logits), "--",
                         sys.executable, "-m", "examples.moe_engine", "--ep", "2", "--save-logits", str(logits))
    assert result.returncode == 0, result.stderr
    assert "observer check: no change (file" in result.stderr
    check = observer_check(run_dir)
    assert check["changed"] is False and check["method"] == "file"
    assert check["exit_codes"] == {"dumping_on": 0, "reference": 0}
    assert len(check["outputs"]) >= 4 and all(o["identical"] for o in check["outputs"])
    assert (run_dir / "observer" / "dumping-off.logits.safetensors").is_file()
    assert (run_dir / "rank-00001" / "index.jsonl").is_file()  # the run itself is the dumping one


@pytest.mark.slow
def test_example_engine_final_tensor_does_not_change(tmp_path):
    run_dir = tmp_path / "run"
    result = dumpcmp_run("--patch", PRESET, "--dir", str(run_dir), "--verify-observer", "--",
                         sys.executable, "-m", "examples.moe_engine", "--steps", "1")
    assert result.returncode == 0, result.stderr
    check = observer_check(run_dir)
    assert (check["changed"], check["method"], check["observed"]) == (False, "tensor", "logits")
    assert len(check["outputs"]) == 2  # the prefill and one decode step


@pytest.mark.slow
def test_observer_sensitive_toy_is_caught(tmp_path):
    run_dir = tmp_path / "run"
    result = dumpcmp_run("--dir", str(run_dir), "--verify-observer", "--observe", "out.safetensors", "--",
                         sys.executable, TOY, "out.safetensors", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "observer check: dumping CHANGED the outputs" in result.stderr
    check = observer_check(run_dir)
    assert check["changed"] is True
    (out,) = check["outputs"]
    assert out["name"] == "out" and not out["identical"] and out["rel_diff"] == pytest.approx(0.2)
