"""``dumpcmp check``: checks that need no baseline, on runs of the example engine and gloo ranks."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from comparator.check import CheckOptions, check_run
from comparator.check.render import check_json, render_check_html, render_check_junit, render_check_text
from tests.helpers.example_runs import demo_runs, dump_example, dump_examples, example_run, example_runs_root
from tests.helpers.procs import torchrun_like

HEALTHY = {
    "tp2ep2_fusion": "--tp 2 --ep 2 --fusion",
    "dpattn_dense_tp": "--tp 2 --ep 2 --dp-attention 2 --dense-tp",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return example_runs_root(tmp_path_factory)


@pytest.fixture(scope="module")
def healthy(root, tmp_path_factory):
    runs = dump_examples(tmp_path_factory.mktemp("check_healthy"), HEALTHY)
    runs["ep2"] = example_run(root, "ep2")
    runs["ep2_stats"] = example_run(root, "ep2_stats")
    return runs


def test_seed1_is_found_on_the_target_alone_naming_tensor_and_axis(root):
    _, target = demo_runs(root)  # --tp 2 --ep 2 --fusion --bug ep_reduce_skipped_under_fusion
    report = check_run(target)
    assert report.exit_code == 1
    first = report.first
    assert first is not None and first.check == "replicas"
    # Layer 0 is dense: the first MoE block's output is layer 1's, and its EP ranks keep partial sums.
    assert (first.name, first.tags, first.step, first.axis) == ("moe_output", {"layer": 1}, 0, "ep")
    assert first.ranks == (0, 2) and first.value > 0.5
    assert "replicated over ep" in first.message and "all-reduce over ep" in first.hint
    # Only the finest axis is named: the world-sized attn_tp holds ep's disagreement too.
    assert {f.axis for f in report.findings} == {"ep"}
    # Everything before it agreed.
    assert all(f.order >= first.order for f in report.findings)


def test_seed1_in_stats_mode_is_found_from_checksums_and_stats(tmp_path):
    run = dump_example(tmp_path, "seed1_stats", "--tp 2 --ep 2 --fusion --bug ep_reduce_skipped_under_fusion",
                       mode="stats")
    report = check_run(run)
    assert report.mode == "stats" and report.exit_code == 1
    assert (report.first.name, report.first.tags, report.first.axis) == ("moe_output", {"layer": 1}, "ep")
    assert "stats differ by" in report.first.message


@pytest.mark.parametrize("name", ["tp2ep2_fusion", "dpattn_dense_tp", "ep2", "ep2_stats"])
def test_healthy_runs_are_clean(healthy, name):
    report = check_run(healthy[name])
    assert report.findings == (), [f.message for f in report.findings]
    assert report.exit_code == 0 and report.verdict == "clean"
    covered = {c.check: c for c in report.coverage}
    assert covered["replicas"].checked > 0 and covered["nonfinite"].checked > 0
    assert covered["collectives"].checked > 0  # the example engine's ranks are traced
    assert covered["partial_sums"].checked > 0


def test_seed3_shared_expert_already_reduced_shows_as_identical_partial_sums(tmp_path):
    run = dump_example(tmp_path, "seed3", "--tp 2 --bug shared_expert_double_reduce")
    report = check_run(run)
    assert report.exit_code == 1
    assert {f.check for f in report.findings} == {"partial_sums"}
    first = report.first
    assert (first.name, first.axis, first.value) == ("shared_expert_output", "moe_tp", 2.0)
    assert "summing them gives 2x" in first.message


NAN_CHILD = """
import torch, torch.distributed as dist
from dumper import dumper
dist.init_process_group("gloo")
rank = dist.get_rank()
dumper.set_parallel(tp=(rank, 2))
x = torch.ones(4, 3)
dumper.dump("hidden_in", x, dims="t h # tp:replicated")
partial = x * (rank + 1)
if rank == 1:
    partial[2, 1] = float("nan")
dumper.dump("down_partial", partial, dims="t h[tp:partial]")
dist.all_reduce(partial)
dumper.dump("mlp_out", partial, dims="t h # tp:replicated")
dumper.step()
dist.barrier()
dist.destroy_process_group()
"""


def test_first_nan_and_the_collective_that_spread_it(tmp_path):
    run = tmp_path / "nan"
    torchrun_like(run, NAN_CHILD, world_size=2)
    report = check_run(run)
    nonfinite = [f for f in report.findings if f.check == "nonfinite"]
    assert len(nonfinite) == 1
    found = nonfinite[0]
    assert found.name == "down_partial" and found.ranks == (1,) and found.value == 1.0
    assert "all_reduce(" in found.hint and "on rank 1 at step 0" in found.hint
    assert "rank 0 were still finite" not in found.hint  # the spreading collective is named instead
    # NaN-holding replicas are the nonfinite check's, not reported as disagreements.
    assert not [f for f in report.findings if f.check == "replicas"]


def test_a_rank_that_skipped_a_collective(healthy, tmp_path):
    run = tmp_path / "skipped"
    shutil.copytree(healthy["tp2ep2_fusion"], run)
    trace = run / "rank-00001" / "collectives.jsonl"
    lines = trace.read_text().splitlines()
    dropped = json.loads(lines[5])
    trace.write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    report = check_run(run)
    found = [f for f in report.findings if f.check == "collectives"]
    # rank 1 dropped an all_reduce over its ep group (ranks 1 and 3): that group, and only it, is out of step.
    assert dropped["op"] == "all_reduce" and dropped["group"]["ranks"] == [1, 3]
    assert len(found) == 1 and found[0].ranks == (1, 3) and found[0].axis == "ep"
    assert "group ep (ranks [1, 3]): ranks 1 and 3 ran different collectives" in found[0].message
    assert "(7 vs 8 calls in all)" in found[0].message
    assert report.exit_code == 1


def test_missing_rank_and_step_are_gaps(healthy, tmp_path):
    run = tmp_path / "gappy"
    shutil.copytree(healthy["ep2"], run)
    shutil.rmtree(run / "rank-00001")
    report = check_run(run)
    gaps = [f.message for f in report.findings if f.check == "gaps"]
    assert any("rank(s) 1 of 2 are absent" in m for m in gaps), gaps


def test_nothing_checked_is_exit_3(tmp_path):
    from tests.helpers.procs import dump_run

    run = tmp_path / "empty"
    dump_run(run, "import torch\nfrom dumper import dumper\ndumper.dump('x', torch.ones(2))\n")
    for index in run.glob("*/index.jsonl"):
        index.write_text("")  # a run whose process dumped nothing
    report = check_run(run)
    assert report.exit_code == 3 and report.verdict == "nothing checked"


def test_every_format_names_the_finding(root):
    report = check_run(demo_runs(root)[1], options=CheckOptions(checks=("replicas",)))
    data = check_json(report)
    assert data["exit_code"] == 1 and data["first_finding"]["axis"] == "ep"
    assert data["summary"]["by_check"] == {"replicas": len(report.findings)}
    assert data["findings"][0]["tensor"] == "moe_output[layer=1]@step0"
    suite = ET.fromstring(render_check_junit(report)).find("testsuite")
    assert suite.get("failures") == "1"
    assert "moe_output[layer=1]@step0" in suite.find("testcase/failure").get("message")
    assert "moe_output[layer=1]@step0 is declared replicated over ep" in render_check_html(report)
    assert "first finding: moe_output[layer=1]@step0" in render_check_text(report)
