"""``--aligner auto`` (the default) on real dumps of runs batched differently.

The example engine runs three requests all at once (the baseline) or in groups
(``--max-batch``: one request at a time, or two then one), through ``dumpcmp run`` with
the example preset: the same tokens in other steps. With default options a healthy
target passes, a seed bug is still found at its layer, and the report says which
aligner auto chose and why. Without the request metadata, the shape mismatch says
what differs and what to do.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from comparator import compare
from tests.helpers.example_runs import dump_examples
from tests.helpers.procs import clean_env

ENGINE = "--prompt-lens 5,3,4 --steps 2"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return dump_examples(tmp_path_factory.mktemp("rebatched"), {
        "baseline": ENGINE,
        "one_by_one": f"{ENGINE} --max-batch 1",
        "tp2_in_twos": f"{ENGINE} --tp 2 --max-batch 2",
        "seed2_one_by_one": f"{ENGINE} --ep 2 --max-batch 1 --bug double_reduce",
    })


def failing(report) -> list[tuple]:
    return [(r.name, r.step, r.tags, r.reason) for r in report.results if r.status != "pass"]


@pytest.mark.parametrize("target", ["one_by_one", "tp2_in_twos"])
def test_a_healthy_run_batched_otherwise_passes_with_default_options(runs, target):
    report = compare(runs["baseline"], runs[target])
    assert report.exit_code == 0, failing(report)
    assert report.aligner == "by_request"
    assert report.aligner_reason == "auto: by_request: step 0 holds 12 tokens in the baseline, " + (
        "5 in the target" if target == "one_by_one" else "8 in the target")
    moe = [r for r in report.results if r.name == "moe_output" and r.tags == {"layer": 1}]
    # One result per target step, in the target's order, each with the baseline steps holding its tokens.
    assert [r.step for r in moe] == list(range(9 if target == "one_by_one" else 6))
    # 3 prompts (12 tokens) and 2 decode steps of 3 requests: every token matched once, none on one side only.
    assert sum(r.alignment.tokens for r in moe) == 18
    assert all(r.alignment.target.only_here == 0 for r in moe)
    if target == "one_by_one":  # request 1's second decode step is the baseline's last step
        assert moe[5].alignment.baseline.steps == (2,) and moe[5].alignment.tokens == 1


def test_the_same_batching_still_compares_step_by_step(runs):
    report = compare(runs["one_by_one"], runs["one_by_one"])
    assert report.exit_code == 0 and report.aligner == "none"
    assert report.aligner_reason == "auto: none: both runs hold the same tokens at each of 9 steps, laid out alike"
    assert {r.step for r in report.results} == set(range(9))


def test_a_seed_bug_is_still_found_at_its_layer(runs):
    report = compare(runs["baseline"], runs["seed2_one_by_one"])
    assert report.exit_code == 1 and report.aligner == "by_request"
    first = report.first_divergence
    assert (first.name, first.tags) == ("moe_output", {"layer": 1})
    assert "looks like a duplicated reduction over a group of size 2" in first.hint
    dense = next(r for r in report.results if r.name == "dense_mlp_output" and r.tags == {"layer": 0})
    assert dense.status == "pass"


def test_without_request_metadata_the_shape_mismatch_says_what_to_do(runs):
    # The metadata is looked for under names neither run dumped: as a run without it.
    missing = ",".join(f"{key}=not_dumped_{key}" for key in ("input_ids", "positions", "token_req_ids", "req_ids",
                                                                "num_tokens_per_dp_rank"))
    report = compare(runs["baseline"], runs["one_by_one"], names="^(attn_output|moe_output)$", aligner_metadata=missing)
    assert report.aligner == "none" and report.exit_code == 1
    assert report.aligner_reason.startswith("auto: none: the baseline run has no usable token metadata")
    result = next(r for r in report.results if r.name == "attn_output" and r.step == 0)
    assert result.reason == "shape mismatch: baseline [12, 64] vs target [5, 64]"
    assert result.hint == ("step 0 has 12 tokens in the baseline and 5 in the target: the runs were batched "
                           "differently; dump the request metadata (the presets' metadata entries: input_ids, "
                           "positions, token_req_ids, seq_lens) or use --aligner by_request")


def test_the_cli_reports_the_choice_in_json_and_table(runs):
    env = clean_env(OMP_NUM_THREADS="1", COLUMNS="200")
    base = [sys.executable, "-c", "from comparator.cli import main; main()", "compare",
            str(runs["baseline"]), str(runs["one_by_one"]), "--names", "^logits$"]
    result = subprocess.run([*base, "--format", "json"], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["aligner"] == "by_request"
    assert report["aligner_reason"].startswith("auto: by_request: step 0 holds 12 tokens in the baseline")
    table = subprocess.run(base, env=env, capture_output=True, text=True, timeout=240)
    assert table.returncode == 0 and "aligner=by_request" in table.stdout
    assert "auto: by_request: step 0 holds 12 tokens in the baseline, 5 in the target" in table.stdout
