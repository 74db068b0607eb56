"""``dumpcmp bisect`` on the example engine: two planted bugs at different layers, found in order."""

from __future__ import annotations

import json
import sys

from comparator.cli.bisecting import site_filter
from tests.helpers.example_runs import cached_example, dumpcmp

ENGINE = "--layers 2"
# Layer 0's dense MLP misses its all-reduce (seed 4); layer 1's MoE output is reduced twice (seed 2).
TWO_BUGS = (f"{ENGINE} --tp 2 --ep 2 --dense-tp --bug dense_tp_missing_reduce --bug double_reduce").split()


def test_bisect_finds_both_bugs_in_order(tmp_path_factory, tmp_path):
    root = tmp_path_factory.getbasetemp() / "graft_runs"
    root.mkdir(exist_ok=True)
    base = cached_example(root, "base", ENGINE)
    proc = dumpcmp("bisect", str(base), "--patch", "example/moe_engine", "--dir", str(tmp_path / "bisect"),
                   "--format", "json", "--", sys.executable, "-m", "examples.moe_engine", *TWO_BUGS, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    found = [(d["name"], d["step"], d["tags"]) for d in result["divergences"]]
    assert found == [("dense_mlp_output", 0, {"layer": 0}), ("moe_output", 0, {"layer": 1})]
    hints = [d["hint"] for d in result["divergences"]]
    assert "missing all-reduce over attn_tp" in hints[0]
    assert "target = 2 x baseline" in hints[1] and "duplicated reduction" in hints[1]
    assert result["agreed"] is True
    verdicts = [r["verdict"] for r in result["rounds"]]
    assert verdicts[0] is None  # the first run grafts nothing
    assert verdicts[1]["outcome"] == "moved" and verdicts[1]["next_divergence"]["name"] == "moe_output"
    assert verdicts[2]["outcome"] == "gone"
    assert [len(r["grafts"]) for r in result["rounds"]] == [0, 1, 2]
    # the runs stay for the user: each grafted one says what was grafted from where
    last = json.loads((tmp_path / "bisect" / "run-2" / "run.json").read_text())
    assert last["graft"]["from"] == str(base.resolve()) and last["graft"]["grafted_records"] > 0


def test_bisect_bad_input_is_one_line(tmp_path):
    proc = dumpcmp("bisect", str(tmp_path / "missing"), "--budget", "0", "--", sys.executable, "-c", "pass")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--budget 0 must be at least 1" in proc.stderr


def test_site_filter_names_one_site_every_step():
    assert site_filter("moe_output", {"layer": 1}) == r"name~^moe_output$ layer=1"
    assert site_filter("model.layers.0.mlp", {}) == r"name~^model\.layers\.0\.mlp$"


def test_bisect_stops_when_the_budget_is_spent(tmp_path_factory, tmp_path):
    root = tmp_path_factory.getbasetemp() / "graft_runs"
    root.mkdir(exist_ok=True)
    base = cached_example(root, "base", ENGINE)
    proc = dumpcmp("bisect", str(base), "--patch", "example/moe_engine", "--dir", str(tmp_path / "bisect"),
                   "--budget", "1", "--", sys.executable, "-m", "examples.moe_engine", *TWO_BUGS, timeout=600)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "2 independent divergence(s), in order:"
    assert lines[1].startswith("  1. dense_mlp_output[layer=0]@step0") and "hint: ranks disagree" in lines[2]
    assert lines[3].startswith("  2. moe_output[layer=1]@step0")
    assert lines[-1] == "the budget of 1 rerun(s) is spent; raise --budget to look further"
    assert sorted(p.name for p in (tmp_path / "bisect").iterdir()) == ["run-0", "run-0.log", "run-1", "run-1.log"]
