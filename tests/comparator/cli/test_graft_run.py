"""``dumpcmp run --graft-from BASE --graft FILTER`` on the example engine: TP2 x EP2 targets grafted from a 1-process baseline."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from dumper.reader import open_run
from tests.helpers.example_runs import cached_example, dumpcmp, dump_example

# Two layers: a dense one, then one MoE layer (layer 1), so seed 1's bug sits at one site.
ENGINE = "--layers 2"
TARGET = f"{ENGINE} --tp 2 --ep 2"
SEED1 = f"{TARGET} --fusion --bug ep_reduce_skipped_under_fusion"


def graft_run(root: Path, name: str, baseline: Path, expression: str, args: str, *options: str) -> Path:
    path = root / name
    if not (path / "run.json").exists():
        proc = dumpcmp("run", "--patch", "example/moe_engine", "--dir", str(path), "--graft-from", str(baseline),
                       "--graft", expression, *options, "--", sys.executable, "-m", "examples.moe_engine", *shlex.split(args),
                       timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "grafted" in proc.stderr, proc.stderr
    return path


@pytest.fixture(scope="session")
def graft_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp() / "graft_runs"
    root.mkdir(exist_ok=True)
    runs = {name: cached_example(root, name, args) for name, args in (("base", ENGINE), ("seed1", SEED1), ("healthy", TARGET))}
    runs["seed1_grafted"] = graft_run(root, "seed1_grafted", runs["base"], "name~^moe_output$ layer=1", SEED1)
    runs["healthy_grafted"] = graft_run(root, "healthy_grafted", runs["base"],
                                        "name~^(attn_output|routed_expert_output|shared_expert_output)$ layer=1", TARGET)
    return runs


def compare_json(baseline: Path, target: Path) -> tuple[int, dict]:
    proc = dumpcmp("compare", str(baseline), str(target), "--format", "json")
    return proc.returncode, json.loads(proc.stdout)


def test_grafting_seed1_first_divergence_makes_the_rest_of_the_run_agree(graft_runs):
    code, report = compare_json(graft_runs["base"], graft_runs["seed1"])
    assert code == 1
    first = report["first_divergence"]
    assert (first["name"], first["step"], first["tags"]) == ("moe_output", 0, {"layer": 1})
    code, report = compare_json(graft_runs["base"], graft_runs["seed1_grafted"])
    failed = [r for r in report["results"] if r["status"] in ("fail", "error")]
    assert failed == [], failed
    downstream = [r for r in report["results"] if r["name"] == "logits"]
    assert len(downstream) == 4 and all(r["status"] == "pass" for r in downstream)
    # the grafted tensors are shown as such, not counted as passes; the divergence is gone
    grafted = [r for r in report["results"] if r["grafted"]]
    assert [(r["name"], r["step"]) for r in grafted] == [("moe_output", step) for step in range(4)]
    assert report["summary"]["passed"] == len(report["results"]) - 4
    assert report["graft"]["outcome"] == "gone" and report["graft"]["graft_point"] == "moe_output[layer=1]@step0"
    table = dumpcmp("compare", str(graft_runs["base"]), str(graft_runs["seed1_grafted"])).stdout
    assert "4 grafted" in table and "graft: gone" in table


def test_grafted_records_are_flagged_and_run_json_says_from_where(graft_runs):
    base = str(graft_runs["base"].resolve())
    with open_run(graft_runs["seed1_grafted"]) as run:
        grafted = {(r.name, r.step, r.rank) for r in run.records if r.graft is not None}
        assert {r.graft for r in run.records if r.graft is not None} == {base}
    # every step of layer 1's MoE output, on each of the 4 ranks (the fused add + norm dumps it)
    assert grafted == {("moe_output", step, rank) for step in range(4) for rank in range(4)}
    info = json.loads((graft_runs["seed1_grafted"] / "run.json").read_text())
    assert info["graft"]["from"] == base and info["graft"]["grafted_records"] == 16
    assert "moe_output step=0 layer=1" in info["graft"]["sites"]
    with open_run(graft_runs["seed1"]) as run:  # runs without a graft: no flag
        assert all(r.graft is None for r in run.records)


def test_grafting_healthy_tensors_changes_nothing(graft_runs):
    """Replicated (attention) and partial-sum (experts over ep x moe_tp) sites: the run is as without the graft."""
    with open_run(graft_runs["healthy_grafted"]) as run:
        names = {r.name for r in run.records if r.graft is not None}
    assert names == {"attn_output", "routed_expert_output", "shared_expert_output"}
    code, report = compare_json(graft_runs["healthy"], graft_runs["healthy_grafted"])
    assert code == 0, [r for r in report["results"] if r["status"] != "pass"]
    assert report["graft"]["outcome"] == "gone" and report["graft"]["grafted"] == 4 * 3
    logits = [r for r in report["results"] if r["name"] == "logits"]
    assert logits and all(r["metrics"]["rel_diff"] < 1e-12 for r in logits)
    code, _ = compare_json(graft_runs["base"], graft_runs["healthy_grafted"])
    assert code == 0


def test_bad_input_is_one_line_before_the_command_starts(graft_runs, tmp_path):
    base = graft_runs["base"]
    marker = tmp_path / "started"
    command = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    stats = dump_example(tmp_path, "stats_base", ENGINE, mode="stats")
    cases = [
        (["--graft-from", str(base), "--graft", "name~no_such_tensor"], "matches nothing in"),
        (["--graft-from", str(stats), "--graft", "name~moe_output"], "holds no tensor data"),
        (["--graft-from", str(base), "--graft", "name~topk_ids"], "floating values only"),
        (["--graft-from", str(base)], "go together"),
    ]
    for options, message in cases:
        proc = dumpcmp("run", "--patch", "example/moe_engine", "--dir", str(tmp_path / "out"), *options, *command)
        assert proc.returncode == 2, (options, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not marker.exists()
    proc = dumpcmp("run", "--dir", str(base / "inside"), "--graft-from", str(base), "--graft", "name~moe", *command)
    assert proc.returncode == 2 and "never writes into its baseline" in proc.stderr
    assert not (base / "inside").exists() and not marker.exists()


def test_concat_steps_grafts_a_dp_attention_baseline_into_a_tp_target(tmp_path_factory):
    """The baseline's MoE rows are padded by DP-attention ([10, h] for 5 tokens): concat_steps drops the padding."""
    root = tmp_path_factory.getbasetemp() / "graft_runs"
    base = cached_example(root, "dp_base", "--layers 2 --ep 2 --dp-attention 2 --prompt-lens 5")
    target = "--layers 2 --tp 2 --prompt-lens 5"
    command = ["--", sys.executable, "-m", "examples.moe_engine", *shlex.split(target)]
    as_is = dumpcmp("run", "--patch", "example/moe_engine", "--dir", str(root / "dp_none"), "--graft-from", str(base),
                    "--graft", "name~^moe_output$", *command)
    # aligner none: the padded rows cannot fit; each site is refused with one line, the engine goes on
    assert as_is.returncode == 0
    assert "this rank's shard of the baseline is [10, 64] where the engine holds [5, 64]" in as_is.stderr
    assert "none of the 4 planned site(s) was reached or fitted" in as_is.stderr
    aligned = graft_run(root, "dp_concat", base, "name~^moe_output$", target, "--graft-aligner", "concat_steps")
    with open_run(aligned) as run:
        assert sum(r.graft is not None for r in run.records) == 4 * 2  # 4 steps x 2 ranks
    proc = dumpcmp("compare", str(base), str(aligned), "--aligner", "concat_steps")
    assert proc.returncode == 0, proc.stdout[-3000:]
