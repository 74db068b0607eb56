"""examples/ci: the nightly gate script against a stored baseline, and the GitHub Actions workflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from tests.helpers.example_runs import dumpcmp, example_run, example_runs_root
from tests.helpers.procs import REPO, clean_env

CI = REPO / "examples" / "ci"


def _script(store: Path, out: Path, cwd: Path, *engine_args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(**env_extra)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return subprocess.run(
        [str(CI / "nightly_gate.sh"), str(store), str(out), "--", sys.executable, "-m", "examples.moe_engine", *engine_args],
        env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def _seeded_store(tmp_path_factory, tmp_path: Path) -> Path:
    baseline = example_run(example_runs_root(tmp_path_factory), "ep2_stats")
    store = tmp_path / "store"
    proc = dumpcmp("gate", "init", str(store), str(baseline))
    assert proc.returncode == 0, proc.stderr
    return store


def test_nightly_gate_fails_on_a_divergence_and_writes_every_report(tmp_path_factory, tmp_path):
    store = _seeded_store(tmp_path_factory, tmp_path)
    before = (store / "CURRENT").read_text()
    out = tmp_path / "gate"
    proc = _script(store, out, tmp_path, "--ep", "2", "--bug", "double_reduce", NIGHTLY_GATE_PROMOTE="1",
                   NIGHTLY_GATE_WAIVERS=str(tmp_path / "no-such-waivers.yaml"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nightly gate: FAIL: a tensor diverged" in proc.stderr
    assert "none applied" in proc.stdout
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) > 0
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert failed[0] == "moe_output[layer=1] (stats only)"
    page = (out / "report.html").read_text()
    assert 'id="first-divergence-name">moe_output[layer=1]@step0<' in page
    assert (out / "report.json").exists() and (out / "run" / "run.json").exists()
    assert not list((out / "run").glob("rank-*/*.safetensors"))  # stats mode: index only
    gate = json.loads((out / "gate.json").read_text())
    assert gate["promoted"] is None and (store / "CURRENT").read_text() == before  # a failing run stays out
    assert (store / "history.jsonl").read_text().count('"kind":"night"') == 1


def test_nightly_gate_promotes_a_passing_run(tmp_path_factory, tmp_path):
    store = _seeded_store(tmp_path_factory, tmp_path)
    proc = _script(store, tmp_path / "gate", tmp_path, "--ep", "2", NIGHTLY_GATE_PROMOTE="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nightly gate: PASS" in proc.stdout
    promoted = json.loads((tmp_path / "gate" / "gate.json").read_text())["promoted"]
    assert promoted and (store / "CURRENT").read_text() == promoted + "\n"


def test_nightly_gate_usage_error():
    proc = subprocess.run([str(CI / "nightly_gate.sh"), "only-one"], capture_output=True, text=True, timeout=30)
    assert "usage: " in proc.stderr and "STORE OUT_DIR -- ENGINE COMMAND..." in proc.stderr
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_github_workflow_runs_the_gate_and_uploads_the_reports():
    workflow = yaml.safe_load((CI / "nightly-gate.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    steps = workflow["jobs"]["gate"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "examples/ci/nightly_gate.sh" in runs and "--mode stats" in runs and "dumpcmp gate init" in runs
    env = workflow["jobs"]["gate"]["env"]
    assert env["NIGHTLY_GATE_PROMOTE"] == "1" and env["NIGHTLY_GATE_WAIVERS"]
    caches = [step for step in steps if step.get("uses", "").startswith("actions/cache/")]
    assert [step["with"]["path"] for step in caches] == ["baseline-store", "baseline-store"]
    assert "always()" in caches[1]["if"]  # the history of a failing night is kept too
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact")]
    paths = "\n".join(step["with"]["path"] for step in uploads)
    assert "gate-out/junit.xml" in paths and "gate-out/report.html" in paths and "gate-out/gate.json" in paths
    report_upload = [step for step in uploads if "report.html" in step["with"]["path"]][0]
    assert "always()" in report_upload["if"]  # reports are uploaded when the gate fails too
    assert Path(CI / "nightly_gate.sh").stat().st_mode & 0o111
