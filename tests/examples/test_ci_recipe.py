"""examples/ci: the nightly gate script against a stored baseline, and the GitHub Actions workflow."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from tests.helpers.example_runs import example_run, example_runs_root
from tests.helpers.procs import REPO, clean_env

CI = REPO / "examples" / "ci"


def test_nightly_gate_fails_on_a_divergence_and_writes_both_reports(tmp_path_factory, tmp_path):
    baseline = example_run(example_runs_root(tmp_path_factory), "ep2_stats")
    env = clean_env()
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    out = tmp_path / "gate"
    proc = subprocess.run(
        [str(CI / "nightly_gate.sh"), str(baseline), str(out), "--",
         sys.executable, "-m", "examples.moe_engine", "--ep", "2", "--bug", "double_reduce"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nightly gate: FAIL: a tensor diverged" in proc.stderr
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) > 0
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert failed[0] == "moe_output[layer=1] (stats only)"
    page = (out / "report.html").read_text()
    assert 'id="first-divergence-name">moe_output[layer=1]@step0<' in page
    assert (out / "report.json").exists() and (out / "run" / "run.json").exists()
    assert not list((out / "run").glob("rank-*/*.safetensors"))  # stats mode: index only


def test_nightly_gate_usage_error():
    proc = subprocess.run([str(CI / "nightly_gate.sh"), "only-one"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_github_workflow_runs_the_gate_and_uploads_the_reports():
    workflow = yaml.safe_load((CI / "nightly-gate.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    steps = workflow["jobs"]["gate"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "examples/ci/nightly_gate.sh" in runs and "--mode stats" in runs
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact")]
    paths = "\n".join(step["with"]["path"] for step in uploads)
    assert "gate-out/junit.xml" in paths and "gate-out/report.html" in paths
    report_upload = [step for step in uploads if "report.html" in step["with"]["path"]][0]
    assert "always()" in report_upload["if"]  # reports are uploaded when the gate fails too
    assert Path(CI / "nightly_gate.sh").stat().st_mode & 0o111
