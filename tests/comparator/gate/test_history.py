"""The gate's history: a line per tensor per night, shown as per-tensor error over the last N nights."""

from __future__ import annotations

import json

import pytest

from comparator.gate.gate import GateConfig, run_gate
from comparator.gate.history import read_history
from comparator.gate.store import open_store
from tests.helpers.example_runs import dumpcmp


@pytest.fixture()
def store_with_history(gate_runs, tmp_path):
    path = tmp_path / "store"
    assert dumpcmp("gate", "init", str(path), str(gate_runs["base"])).returncode == 0
    for night, run in enumerate(("fp_tonight", "bug", "fp_tonight")):
        run_gate(GateConfig(store=str(path), run=str(gate_runs[run]), output_dir=str(tmp_path / f"n{night}"),
                            formats=("json",)))
    return path


def test_each_gate_run_appends_a_night_and_its_tensors(store_with_history):
    history = read_history(open_store(store_with_history).history_path)
    assert [n.exit_code for n in history.nights] == [0, 1, 0]
    label = "moe_output[layer=1]@step0"
    series = history.series(label)
    assert [p.status for p in series] == ["pass", "fail", "pass"]
    assert series[1].metric == "norm_ratio-1" and series[1].error == pytest.approx(1.0, rel=1e-3)  # 2x: |2 - 1|
    assert series[0].error < 1e-6
    assert len(read_history(open_store(store_with_history).history_path, last=2).nights) == 2


def test_history_in_three_formats(store_with_history, tmp_path):
    table = dumpcmp("gate", "history", str(store_with_history), "--nights", "3", "--top", "3")
    assert table.returncode == 0, table.stderr
    assert "gate history: 3 nights, 3 tensors" in table.stdout
    assert "moe_output[layer=1]@step0" in table.stdout and "1 FAIL" in table.stdout
    proc = dumpcmp("gate", "history", str(store_with_history), "-f", "json", "--tensors", r"^moe_output\[layer=1\]")
    data = json.loads(proc.stdout)
    assert list(data["tensors"]) == ["moe_output[layer=1]@step0", "moe_output[layer=1]@step1",
                                     "moe_output[layer=1]@step2", "moe_output[layer=1]@step3"]
    assert [p["status"] for p in data["tensors"]["moe_output[layer=1]@step0"]] == ["pass", "fail", "pass"]
    page = tmp_path / "history.html"
    assert dumpcmp("gate", "history", str(store_with_history), "-f", "html", "-o", str(page)).returncode == 0
    html = page.read_text()
    assert '<table id="history">' in html and "<svg" in html and 'class="bad"' in html


def test_a_corrupt_history_line_is_one_line_naming_it(store_with_history):
    history = open_store(store_with_history).history_path
    lines = open(history).read().splitlines()
    lines[3] = lines[3][:20]
    open(history, "w").write("\n".join(lines) + "\n")
    proc = dumpcmp("gate", "history", str(store_with_history))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"dumpcmp: error: {history}:4: corrupt history line (JSONDecodeError: ")
    assert proc.stderr.endswith("delete or repair line 4 (each line is one JSON object)\n")
