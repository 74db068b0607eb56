"""``dumpcmp show``: one tensor's stats and shards, its diff against a baseline, and its picture."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from comparator.cli import app
from comparator.report.png import read_png_size
from tests.helpers.example_runs import demo_runs, example_run, example_runs_root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = example_runs_root(tmp_path_factory)
    baseline, target = demo_runs(root)
    return {"base": baseline, "target": target, "stats": example_run(root, "ep2_stats")}


def _show(*args: str):
    return CliRunner().invoke(app, ["show", *map(str, args)], catch_exceptions=False)


def test_several_matches_are_listed(runs):
    result = _show(runs["target"], "moe_output")
    assert result.exit_code == 0
    assert "8 tensors named moe_output" in result.stdout and "pick one with --step/--tags" in result.stdout


def test_one_tensor_with_its_shards_and_diff(runs, tmp_path):
    result = _show(runs["target"], "moe_output", "--step", "0", "--tags", "layer=1", "--baseline", runs["base"],
                   "--plot", tmp_path / "diff.png")
    assert result.exit_code == 1  # it diverges
    out = result.stdout
    assert "moe_output[layer=1]@step0" in out and "4 shard(s)" in out and "xxh3_64:" in out
    assert "against the baseline: fail" in out and "missing all-reduce over ep" in out.replace("\n", " ")
    png = (tmp_path / "diff.png").read_bytes()
    width, height = read_png_size(png)
    assert width >= 256 and height > 120 and b"tEXt" in png
    assert "heatmap: |t - b|, rows = token 0..16" in out.replace("\n", " ")


def test_svg_picture_and_a_passing_tensor(runs, tmp_path):
    result = _show(runs["target"], "attn_output", "-s", "0", "-t", "layer=0", "-b", runs["base"],
                   "--plot", tmp_path / "attn.svg")
    assert result.exit_code == 0 and "against the baseline: pass" in result.stdout
    root = ET.parse(tmp_path / "attn.svg").getroot()
    assert root.tag.endswith("svg") and len(root) >= 3


def test_stats_run_shows_stats_and_refuses_a_plot(runs, tmp_path):
    result = _show(runs["stats"], "moe_output", "-s", "0", "-t", "layer=1")
    assert result.exit_code == 0 and "stats only (no data)" in result.stdout
    result = _show(runs["stats"], "moe_output", "-s", "0", "-t", "layer=1", "--plot", tmp_path / "x.png")
    assert result.exit_code == 2 and "dumped in stats mode): nothing to plot" in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (("moe_outpt",), "no tensor named 'moe_outpt'; did you mean moe_output"),
    (("moe_output", "--step", "9"), "'moe_output' has no record at step 9"),
    (("moe_output", "--tags", "layer"), "--tags 'layer': expected KEY=VALUE"),
])
def test_user_errors_are_one_line(runs, args, message):
    result = _show(runs["target"], *args)
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
