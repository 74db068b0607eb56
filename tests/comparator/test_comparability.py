"""Fingerprints decide whether a comparison means anything (comparator/comparability.py), on real runs
of the example engine dumped through its preset (which records the model: dumper.record_model)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from comparator.comparability import check_comparable, compare_fingerprints
from comparator.errors import ComparabilityError
from comparator.fingerprint import read_fingerprint
from tests.helpers.example_runs import dumpcmp
from tests.helpers.fingerprint_runs import fingerprint_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return fingerprint_runs(tmp_path_factory)


def _one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_every_rank_records_the_model_and_the_run_fingerprint(runs):
    fp = read_fingerprint(runs["base"])
    assert fp.model is not None and fp.model_conflicts == ()
    assert fp.model["architecture"] == "MoEModel" and fp.model["dtype"] == "float32"
    assert fp.model["config_hash"].startswith("sha256:") and fp.model["weights"].startswith("sha256:")
    assert fp.env == {"DUMPCMP_MODE": "stats"}
    assert [p.rsplit("/", 1)[-1] for p in fp.patches] == ["moe_engine.yaml"]
    # The weights digest is of the full weights: the same under EP=1 and EP=2.
    assert read_fingerprint(runs["fp_ep1"]).model["weights"] == fp.model["weights"]


def test_same_model_other_layout_lists_the_expected_differences(runs):
    comparison = compare_fingerprints(read_fingerprint(runs["base"]), read_fingerprint(runs["fp_ep1"]))
    assert comparison and not comparison.model
    fields = {d.field: (d.baseline, d.target) for d in comparison.expected}
    assert fields["parallel.ep"] == (2, 1) and "command" in fields


def test_a_run_compared_with_itself_is_refused(runs, tmp_path):
    proc = dumpcmp("compare", str(runs["base"]), str(runs["base"]))
    assert proc.returncode == 2
    assert _one_error_line(proc).startswith("dumpcmp: error: baseline and target are the same directory")
    copy = tmp_path / "copy"
    shutil.copytree(runs["base"], copy)  # a copy keeps the run id
    with pytest.raises(ComparabilityError, match="same run .run id"):
        check_comparable(runs["base"], copy)
    allowed = dumpcmp("compare", str(runs["base"]), str(copy), "--allow-self", "--format", "json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["summary"]["failed"] == 0


def test_another_model_is_refused_in_one_line_unless_allowed(runs):
    proc = dumpcmp("compare", str(runs["base"]), str(runs["fp_seed1"]))
    assert proc.returncode == 2 and proc.stdout == ""
    line = _one_error_line(proc)
    assert "ran different models (model.config_hash: sha256:" in line and "model.weights: sha256:" in line
    assert line.endswith("or pass --allow-different-model if this is intended")
    allowed = dumpcmp("compare", str(runs["base"]), str(runs["fp_seed1"]), "--allow-different-model", "-f", "json")
    assert allowed.returncode == 1, allowed.stderr  # compared: other weights diverge at once
    differences = json.loads(allowed.stdout)["runs"]["differences"]
    assert {d["field"]: d["allowed_by"] for d in differences if d["kind"] == "model"} == {
        "model.config_hash": "--allow-different-model", "model.weights": "--allow-different-model"}


def test_another_dtype_needs_a_thresholds_file_that_allows_it(runs, tmp_path):
    proc = dumpcmp("compare", str(runs["base"]), str(runs["fp_bf16"]))
    assert proc.returncode == 2
    assert "(model.dtype: float32 -> bfloat16)" in _one_error_line(proc)
    assert "'allow_dtype_change: true'" in proc.stderr
    thresholds = tmp_path / "t.yaml"
    thresholds.write_text("allow_dtype_change: true\n")
    allowed = dumpcmp("compare", str(runs["base"]), str(runs["fp_bf16"]), "-t", str(thresholds), "-f", "json")
    assert allowed.returncode in (0, 1), allowed.stderr
    model = [d for d in json.loads(allowed.stdout)["runs"]["differences"] if d["kind"] == "model"]
    assert model == [{"field": "model.dtype", "baseline": "float32", "target": "bfloat16", "kind": "model",
                      "allowed_by": "thresholds: allow_dtype_change"}]


def test_every_format_from_one_compare_says_what_differs(runs, tmp_path):
    out = tmp_path / "reports"
    proc = dumpcmp("compare", str(runs["base"]), str(runs["fp_ep1"]), "--output-dir", str(out),
                   "--format", "json,junit", "--format", "html,table")
    assert proc.returncode in (0, 1) and proc.stdout == "", proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.html", "report.json", "report.txt"]
    report = json.loads((out / "report.json").read_text())
    assert report["exit_code"] == proc.returncode
    assert {"field": "parallel.ep", "baseline": 2, "target": 1, "kind": "expected", "allowed_by": None} in \
        report["runs"]["differences"]
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    runs_props = [p.get("value") for p in suite.iter("property") if p.get("name") == "runs"]
    assert any("parallel.ep: 2 -> 1" in value for value in runs_props)
    assert int(suite.get("tests")) == report["summary"]["total"]  # one comparison, every file
    assert "parallel.ep: 2 -&gt; 1" in (out / "report.html").read_text() or \
        "parallel.ep</td>" in (out / "report.html").read_text()
    assert "runs differ in (expected): " in (out / "report.txt").read_text()
    assert "parallel.ep: 2 -> 1" in (out / "report.txt").read_text()


def test_several_formats_need_an_output_dir(runs):
    proc = dumpcmp("compare", str(runs["base"]), str(runs["fp_ep1"]), "--format", "json,junit")
    assert proc.returncode == 2
    assert _one_error_line(proc) == ("dumpcmp: error: --format json,junit: several formats need --output-dir DIR "
                                     "(one file each)")
    bad = dumpcmp("compare", str(runs["base"]), str(runs["fp_ep1"]), "-d", "x", "--format", "json,pdf")
    assert bad.returncode == 2 and "unknown format 'pdf'; valid formats: json, junit, html, table" in bad.stderr
