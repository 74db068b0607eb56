"""Real dumps: the example engine with DP-attention and an idle DP rank (seed 5) against 1 process.

Both runs go through ``dumpcmp run --patch patches/presets/example/moe_engine.yaml``:
one request of 5 tokens and 2 decode steps, the target on 2 processes with EP 2 and
DP-attention 2, so its second DP rank is idle (one padding token) and its MoE tensors
hold 10 rows in the prefill where the baseline holds 5.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.procs import REPO, clean_env

DUMPCMP = [sys.executable, "-c", "from comparator.cli import main; main()"]
PRESET = str(REPO / "patches" / "presets" / "example" / "moe_engine.yaml")
ENGINE = ["--prompt-lens", "5", "--steps", "2"]


def dumpcmp(*args: str, cwd, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    # A wide console, so that the table's hint column is not cut.
    return subprocess.run([*DUMPCMP, *args], env=clean_env(OMP_NUM_THREADS="1", COLUMNS="200"), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed5")
    for name, extra in (("base", []), ("dp", ["--ep", "2", "--dp-attention", "2"])):
        result = dumpcmp("run", "--patch", PRESET, "--dir", name, "--", sys.executable, "-m", "examples.moe_engine",
                         *ENGINE, *extra, cwd=root)
        assert result.returncode == 0, result.stderr
    return root


def compare_json(runs, *options: str) -> tuple[int, dict]:
    result = dumpcmp("compare", "base", "dp", "--format", "json", *options, cwd=runs)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def by_label(report: dict) -> dict[tuple[str, int, str], dict]:
    return {(r["name"], r["step"], json.dumps(r["tags"], sort_keys=True)): r for r in report["results"]}


def test_concat_steps_passes_and_says_what_it_trimmed(runs):
    code, report = compare_json(runs, "--aligner", "concat_steps")
    failing = [(r["name"], r["step"], r["tags"], r["reason"]) for r in report["results"] if r["status"] != "pass"]
    assert code == 0 and not failing
    results = by_label(report)
    moe = results["moe_output", 0, '{"layer": 1}']["alignment"]
    assert moe["aligner"] == "concat_steps" and moe["tokens"] == 7
    assert moe["target"]["steps"] == [0, 1, 2] and moe["target"]["layouts"][0] == "dp_gathered"
    assert moe["target"]["padding_rows"] == 5 + 1 + 1 and moe["baseline"]["padding_rows"] == 0
    attention = results["attn_output", 0, '{"layer": 0}']["alignment"]
    assert attention["target"]["padding_rows"] == 3 and attention["target"]["layouts"] == ["dp_local"] * 3
    assert report["summary"]["total"] == len(report["results"]) == len({(r["name"], json.dumps(r["tags"])) for r in report["results"]})


def test_by_request_passes_too(runs):
    code, report = compare_json(runs, "--aligner", "by_request")
    assert code == 0, [(r["name"], r["reason"]) for r in report["results"] if r["status"] != "pass"]
    logits = by_label(report)["logits", 0, "{}"]["alignment"]
    assert logits["tokens"] == 3 and logits["target"]["only_here"] == logits["baseline"]["only_here"] == 0


def test_the_default_auto_picks_concat_steps_and_says_why(runs):
    code, report = compare_json(runs)
    assert code == 0, [(r["name"], r["reason"]) for r in report["results"] if r["status"] != "pass"]
    assert report["aligner"] == "concat_steps"
    assert report["aligner_reason"] == ("auto: concat_steps, step by step: the same tokens at every step, laid out "
                                        "differently "
                                        "(step 0: 5 rows for 5 tokens in the baseline, 2 DP ranks, 6 rows for 5 "
                                        "tokens in the target)")


def test_without_an_aligner_the_padding_hint_names_concat_steps(runs):
    code, report = compare_json(runs, "--aligner", "none")
    assert code == 1
    hints = {r["hint"] for r in report["results"] if r["status"] == "fail"}
    assert any("looks like padding, try --aligner concat_steps" in (h or "") for h in hints)
    results = by_label(report)
    moe = results["moe_output", 0, '{"layer": 1}']
    assert moe["status"] == "fail" and "shape mismatch: baseline [5, 64] vs target [10, 64]" in moe["reason"]
    # The seed-5 shape: [6, h] with the idle DP rank's padding row against [5, h].
    attention = results["attn_output", 0, '{"layer": 0}']
    assert attention["reason"] == "shape mismatch: baseline [5, 64] vs target [6, 64]"
    assert attention["hint"] == ("target has 1 extra rows along dim 0 (at the end) and the rest match: looks like "
                                 "padding, try --aligner concat_steps")


def test_table_shows_the_alignment(runs):
    result = dumpcmp("compare", "base", "dp", "--aligner", "concat_steps", "--names", "^moe_output$", cwd=runs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "concat_steps: 3 steps merged; target: 7 padding rows" in result.stdout
