"""``dumpcmp compare``: exit codes, error lines, and the JSON and JUnit outputs against their schemas."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import jsonschema
import pytest
from typer.testing import CliRunner

from comparator.cli import app

NUMBER_OR_NULL = {"type": ["number", "null"]}
TAGS = {"type": "object"}

# The JSON contract of DESIGN.md ("at least" these fields, with these types).
REPORT_SCHEMA = {
    "type": "object",
    "required": ["summary", "first_divergence", "results"],
    "properties": {
        "summary": {
            "type": "object",
            "required": ["total", "passed", "failed", "skipped", "errored"],
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("total", "passed", "failed", "skipped", "errored")},
        },
        "first_divergence": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["name", "step", "tags", "hint"],
                    "properties": {
                        "name": {"type": "string"}, "step": {"type": "integer"}, "tags": TAGS,
                        "hint": {"type": ["string", "null"]},
                        "origin": {"enum": ["source", "propagated"]},
                    },
                },
            ]
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "step", "tags", "status", "metrics", "hint"],
                "properties": {
                    "name": {"type": "string"},
                    "step": {"type": "integer"},
                    "tags": TAGS,
                    "status": {"enum": ["pass", "fail", "skip", "error"]},
                    "metrics": {
                        "type": "object",
                        "required": ["rel_diff", "rel_l2", "cosine", "max_abs", "mean_abs", "norm_ratio"],
                        "properties": {m: NUMBER_OR_NULL for m in ("rel_diff", "rel_l2", "cosine", "max_abs", "mean_abs", "norm_ratio")},
                    },
                    "hint": {"type": ["string", "null"]},
                },
            },
        },
    },
}

# The JUnit XML that CI servers read (Jenkins/Ant dialect), checked on its parsed tree.
JUNIT_SCHEMA = {
    "type": "object",
    "required": ["tag", "children"],
    "properties": {
        "tag": {"const": "testsuites"},
        "children": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "tag": {"const": "testsuite"},
                    "attrib": {
                        "type": "object",
                        "required": ["name", "tests", "failures", "errors", "skipped"],
                        "properties": {k: {"type": "string", "pattern": "^[0-9]+$"} for k in ("tests", "failures", "errors", "skipped")},
                    },
                    "children": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "oneOf": [
                                {"properties": {"tag": {"const": "properties"}}},
                                {
                                    "properties": {
                                        "tag": {"const": "testcase"},
                                        "attrib": {"type": "object", "required": ["name", "classname"]},
                                        "children": {
                                            "type": "array", "maxItems": 2,
                                            "items": {"type": "object", "properties": {
                                                "tag": {"enum": ["failure", "error", "skipped", "system-out"]},
                                                "attrib": {"type": "object"},
                                            }},
                                        },
                                    }
                                },
                            ],
                        },
                    },
                },
            },
        },
    },
}


def tree(element: ET.Element) -> dict:
    return {"tag": element.tag, "attrib": dict(element.attrib), "children": [tree(child) for child in element]}


def invoke(*args: str):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def test_exit_0_and_json_matches_the_contract(runs):
    result = invoke(runs["tp1"], runs["tp2"], "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["summary"] == {**report["summary"], "total": 20, "passed": 20, "failed": 0, "skipped": 0, "errored": 0}
    assert report["first_divergence"] is None


def test_exit_1_with_first_divergence_in_json(runs):
    result = invoke(runs["tp1"], runs["tp2_missing_allreduce"], "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    jsonschema.validate(report, REPORT_SCHEMA)
    first = report["first_divergence"]
    assert (first["name"], first["step"], first["tags"]) == ("mlp_out", 0, {"layer": 0})
    assert "missing all-reduce over tp" in first["hint"]
    assert [r["status"] for r in report["results"][:3]] == ["pass", "pass", "pass"]


def test_junit_has_one_testcase_per_tensor_and_matches_its_schema(runs, tmp_path):
    output = tmp_path / "report.xml"
    result = invoke(runs["tp1"], runs["tp1_scale2"], "--format", "junit", "--output", output)
    assert result.exit_code == 1 and result.stdout == ""
    root = ET.fromstring(output.read_text())
    jsonschema.validate(tree(root), JUNIT_SCHEMA)
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == int(suite.get("tests")) == 20
    assert len(suite.findall("testcase/failure")) == int(suite.get("failures")) == 12
    first_failure = next(case for case in cases if case.find("failure") is not None)
    assert first_failure.get("name") == "mlp_out[layer=1]" and first_failure.get("classname") == "dumpcmp.step0"
    assert "target = 2 x baseline" in first_failure.find("failure").get("message")


def test_allowed_failures_are_skipped_testcases_and_exit_0(runs):
    result = invoke(runs["tp1"], runs["tp1_scale2"], "--format", "junit", "--allow-fail", ".")
    assert result.exit_code == 0
    suite = ET.fromstring(result.stdout).find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("skipped")) == 12


def test_table_shows_the_first_divergence_on_top(runs):
    result = invoke(runs["tp1"], runs["tp1_scale2"])
    assert result.exit_code == 1
    assert result.stdout.index("first divergence") < result.stdout.index("hidden_in")
    assert "target = 2 x baseline" in result.stdout
    assert "exit 1:" in result.stdout


def test_allow_skip_and_exit_3(runs):
    args = (runs["tp1"], runs["tp1_again"], "--steps", "0:1", "--baseline-steps", "0:2", "--format", "json")
    assert invoke(*args).exit_code == 1
    assert invoke(*args, "--allow-skip", "^(hidden_in|up_proj|down_partial|mlp_out|residual)$").exit_code == 0
    # Repeated: a name is allowed when any pattern matches; one pattern alone is not enough.
    assert invoke(*args, "--allow-skip", "^(hidden_in|up_proj)$", "--allow-skip", "^(down_partial|mlp_out|residual)$").exit_code == 0
    assert invoke(*args, "--allow-skip", "^(hidden_in|up_proj)$").exit_code == 1
    assert invoke(runs["tp1"], runs["tp2"], "--names", "nothing_matches").exit_code == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--aligner", "nope"], "unknown aligner 'nope'; valid aligners: auto, none, concat_steps, by_request"),
        (["--format", "html", "--output", "/nonexistent-dir/report.html"], "cannot write the report"),
        (["--steps", "3:1"], "empty step range '3:1'"),
        (["--names", "("], "--names '(' is not a valid regular expression"),
        (["--override-dims", "x=t h["], "unbalanced brackets"),
        (["--override-dims", "nodims"], "write NAME=DIMS"),
    ],
)
def test_bad_options_exit_2_with_one_line(runs, extra, message):
    result = invoke(runs["tp1"], runs["tp2"], *extra)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("dumpcmp: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_bad_format_name_lists_the_valid_ones(runs):
    result = invoke(runs["tp1"], runs["tp2"], "--format", "xml")
    assert result.exit_code == 2
    assert "table" in result.output and "junit" in result.output


def test_bad_thresholds_file_names_file_and_line(runs, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: mlp\n    rel_dif: 1e-3\n")
    result = invoke(runs["tp1"], runs["tp2"], "--thresholds", rules)
    assert result.exit_code == 2
    assert f"{rules}:3: unknown metric 'rel_dif'" in result.stderr
    rules.write_text("rules: [\n")
    result = invoke(runs["tp1"], runs["tp2"], "--thresholds", rules)
    assert result.exit_code == 2 and f"{rules}:2: invalid YAML" in result.stderr


def test_missing_and_empty_run_directories_exit_2(runs, tmp_path):
    result = invoke(tmp_path / "nope", runs["tp2"])
    assert result.exit_code == 2 and "no such directory" in result.stderr
    (tmp_path / "empty").mkdir()
    result = invoke(runs["tp1"], tmp_path / "empty")
    assert result.exit_code == 2 and "no run here" in result.stderr
    (tmp_path / "noindex" / "rank-00000").mkdir(parents=True)
    result = invoke(runs["tp1"], tmp_path / "noindex", "--format", "json")
    assert result.exit_code == 2 and "the run holds no dumped tensors" in result.stderr
