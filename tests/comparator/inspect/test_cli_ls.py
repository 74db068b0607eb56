"""``dumpcmp ls``: table and JSON views of a real run, and what is missing."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from comparator.cli import app
from tests.helpers.procs import torchrun_like

CHILD = """
import torch, torch.distributed as dist
from dumper import dumper
dist.init_process_group("gloo")
rank = dist.get_rank()
dumper.set_parallel(tp=(rank, 2))
for step in range(2 + rank):  # rank 1 runs one step more than rank 0
    with dumper.tags(layer=0):
        dumper.dump("attn_out", torch.ones(3, 4), dims="t h[tp]")
    dumper.step()
"""

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ls") / "run"
    torchrun_like(path, CHILD, world_size=2)
    return path


def test_ls_json(run_dir):
    result = runner.invoke(app, ["ls", str(run_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["world_size"] == 2
    assert [(r["rank"], r["steps"], r["status"]) for r in data["ranks"]] == [(0, [0, 1], "closed"), (1, [0, 1, 2], "closed")]
    assert data["ranks"][1]["parallel"] == {"tp": {"rank": 1, "size": 2}}
    (tensor,) = data["tensors"]
    assert tensor["name"] == "attn_out" and tensor["tags"] == {"layer": 0} and tensor["shapes"] == [[3, 4]]
    assert tensor["dims"] == "t h[tp]" and tensor["bytes"] == 5 * 48
    assert data["problems"] == ["rank-00000: stops at step 1, other ranks reach step 2"]
    assert data["complete"] is False


def test_ls_table_names_what_is_missing(run_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    shutil.rmtree(partial / "rank-00001")
    result = runner.invoke(app, ["ls", str(partial)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "attn_out" in result.stdout and "tp=0/2" in result.stdout
    assert "rank(s) 1 of 2 are absent" in result.stdout


def test_ls_bad_input_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["ls", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"dumpcmp: error: {tmp_path / 'missing'}: no such directory"
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["ls", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no run here (no run.json, no rank-* directories, no SGLang .pt dumps)" in result.stderr
    bad = tmp_path / "bad"
    (bad / "rank-00000").mkdir(parents=True)
    (bad / "run.json").write_text('{"schema_version": 99}')
    result = runner.invoke(app, ["ls", str(bad)])
    assert result.exit_code == 2
    assert "run schema version 99" in result.stderr and "upgrade dumpcmp" in result.stderr


def test_ls_reads_the_index_summaries_and_lists_what_the_lines_say(run_dir, tmp_path):
    """Two ranks' index-summary.json files give the same listing as their index lines (dumper/index_summary.py)."""
    assert sorted(p.parent.name for p in run_dir.glob("rank-*/index-summary.json")) == ["rank-00000", "rank-00001"]
    with_summaries = runner.invoke(app, ["ls", str(run_dir), "--format", "json"])
    without = tmp_path / "without"
    shutil.copytree(run_dir, without)
    for path in without.glob("rank-*/index-summary.json"):
        path.unlink()
    from_lines = runner.invoke(app, ["ls", str(without), "--format", "json"])
    assert with_summaries.exit_code == from_lines.exit_code == 0
    assert json.loads(with_summaries.stdout) == {**json.loads(from_lines.stdout), "path": str(run_dir)}


def test_ls_prints_a_long_tensor_table_as_plain_columns(tmp_path):
    """More rows than rich lays out quickly (render_ls.PLAIN_ROWS): one aligned line a row, every name shown."""
    from comparator.inspect.render_ls import PLAIN_ROWS
    from tests.comparator.test_unshard_plans import _synth_run_module

    synth = _synth_run_module()
    synth.write_run(str(tmp_path / "run"), synth.Layout(tp=2, ep=1, dp=1), layers=40, steps=2, tokens=4, hidden=8)
    result = runner.invoke(app, ["ls", str(tmp_path / "run")], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index(f"tensors ({40 * 6})")
    assert 40 * 6 > PLAIN_ROWS and lines[start + 1].split() == ["name", "tags", "dtype", "shape", "dims", "steps",
                                                                 "ranks", "bytes"]
    rows = lines[start + 3:start + 3 + 40 * 6]
    assert rows[0].split()[:3] == ["attn.qkv", "layer=0", "float32"] and rows[-1].split()[:2] == ["layer.out", "layer=39"]
    assert len({row.index("float32") for row in rows}) == 1  # aligned columns
    assert all(row.split()[-4:-2] == ["0-1", "0-1"] for row in rows)  # steps, ranks
