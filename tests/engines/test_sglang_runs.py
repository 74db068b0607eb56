"""SGLang dump directories compared with each other and with our own runs, through the CLI.

SGLang does not run here: the directories are written in its format (tests/engines/
sglang_dirs.py) with its dims strings, parallel info and file-name tags.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from comparator.cli import app
from tests.engines.sglang_dirs import LAYERS, STEPS, write_own_run, write_sglang_run

runner = CliRunner()
TENSORS_PER_RUN = 3 * LAYERS * STEPS


def compare(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["compare", *map(str, args), "--format", "json"])
    assert result.exit_code in (0, 1), result.output[-3000:]
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="module")
def tp1(tmp_path_factory):
    return write_sglang_run(tmp_path_factory.mktemp("sglang_tp1"), tp_size=1)


def test_sglang_tp2_target_unshards_split_partial_and_replicated_dims(tp1, tmp_path):
    target = write_sglang_run(tmp_path / "tp2", tp_size=2)
    code, report = compare(tp1, target)
    assert code == 0 and report["first_divergence"] is None
    assert report["summary"]["passed"] == TENSORS_PER_RUN
    plans = {r["name"]: r["target"]["unshard"] for r in report["results"]}
    assert plans == {"attn_heads": "concat dim 1 over tp(2)", "moe_partial": "sum over tp(2)",
                     "moe_output": "pick one tp replica of 2, verify the rest"}
    assert {"layer_id": 0, "recompute_status": "disabled"} in [r["tags"] for r in report["results"]]


def test_sglang_missing_all_reduce_is_the_first_divergence_with_its_hint(tp1, tmp_path):
    def keep_partial_sums(name, rank, layer, value):
        # Every rank keeps only its own experts' share: the all-reduce over tp was skipped.
        return value * (0.3, 0.7)[rank] if name == "moe_output" and layer == 0 else value

    target = write_sglang_run(tmp_path / "tp2_bug", tp_size=2, mangle=keep_partial_sums)
    code, report = compare(tp1, target)
    first = report["first_divergence"]
    assert code == 1 and (first["name"], first["step"], first["tags"]["layer_id"]) == ("moe_output", 0, 0)
    assert "sum" in first["hint"] and "all-reduce" in first["hint"]


def test_sglang_doubled_reduction_gets_the_scale_hint(tp1, tmp_path):
    def reduce_twice(name, rank, layer, value):
        return value * 2 if name == "moe_output" and layer == 1 else value

    target = write_sglang_run(tmp_path / "tp2_double", tp_size=2, mangle=reduce_twice)
    code, report = compare(tp1, target)
    first = report["first_divergence"]
    assert code == 1 and (first["name"], first["tags"]["layer_id"]) == ("moe_output", 1)
    assert "2" in first["hint"] and "x baseline" in first["hint"]


def test_our_run_against_an_sglang_run_through_a_name_map(tmp_path):
    """Ours is the baseline (tag ``layer``, transformers-style ``1 t h``); SGLang TP=2 the target
    (tag ``layer_id``, an extra ``recompute_status`` tag, SGLang's fused ``(a*b)`` spelling)."""
    own = write_own_run(tmp_path / "own")
    target = write_sglang_run(tmp_path / "sglang_tp2", tp_size=2)
    name_map = tmp_path / "names.yaml"
    name_map.write_text("tags: {layer_id: layer}\nignore_tags: [recompute_status]\n")
    code, report = compare(own, target, "--name-map", name_map)
    assert code == 0, report["first_divergence"]
    assert report["summary"]["passed"] == TENSORS_PER_RUN
    # And the other way round: SGLang TP=1 as the reference of our run.
    reverse_map = tmp_path / "reverse.yaml"
    reverse_map.write_text("tags: {layer: layer_id}\nignore_tags: [recompute_status]\n")
    code, report = compare(write_sglang_run(tmp_path / "sglang_tp1", tp_size=1), own, "--name-map", reverse_map)
    skipped = [r for r in report["results"] if r["status"] != "pass"]
    assert code == 0 and not skipped


def test_sglang_dp_attention_target_gathers_tokens_over_attn_dp(tmp_path):
    """``t[dp] h # dp:=attn_dp tp:replicated``: the dp axis of this tensor is attn_dp, whose
    ranks hold consecutive token blocks; tp spans the same ranks and adds nothing."""
    own = write_own_run(tmp_path / "own", dp_attention=True)
    target = write_sglang_run(tmp_path / "sglang_dp2", tp_size=2, dp_attention=True)
    name_map = tmp_path / "names.yaml"
    name_map.write_text("tags: {layer_id: layer}\nignore_tags: [recompute_status]\n")
    code, report = compare(own, target, "--name-map", name_map)
    assert code == 0, report["first_divergence"]
    gathered = by_name(report, "attn_tokens")
    assert len(gathered) == LAYERS * STEPS and all(r["status"] == "pass" for r in gathered)
    assert "concat dim 0 over attn_dp(2)" in gathered[0]["target"]["unshard"]


def by_name(report: dict, name: str) -> list[dict]:
    return [r for r in report["results"] if r["name"] == name]


def test_sglang_runs_list_their_ranks_and_tensors(tp1, tmp_path):
    target = write_sglang_run(tmp_path / "tp2", tp_size=2)
    result = runner.invoke(app, ["ls", target, "--format", "json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["format"] == "sglang" and len(listing["ranks"]) == 2
    assert {t["name"] for t in listing["tensors"]} == {"attn_heads", "moe_partial", "moe_output"}
