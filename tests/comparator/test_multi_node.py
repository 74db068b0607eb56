"""A run spread over several directories, one per node (node-local disks), read as one run.

Two "nodes" on this machine: each runs its own ``dumpcmp run`` into its own directory,
starting two of the four ranks of one TP 2 x EP 2 example engine (tests/helpers/node_launch.py
plays torchrun's part). ``compare``, ``ls`` and ``check`` take the quoted glob that names
both directories.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from comparator import compare
from dumper.config import launcher_run_id
from dumper.errors import RunFormatError
from dumper.reader import open_run
from tests.helpers.example_runs import DUMPCMP, demo_runs, example_runs_root
from tests.helpers.procs import clean_env

pytestmark = pytest.mark.slow
ENGINE = [sys.executable, "-m", "examples.moe_engine", "--tp", "2", "--ep", "2"]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_nodes(root: Path, *, run_ids: tuple[str | None, str | None], elastic_id: str | None = None,
              nodes: tuple[str, ...] = ("0,1", "2,3")) -> list[Path]:
    """Dump the 4-rank engine as two nodes (one `dumpcmp run` each); returns the node directories."""
    port = _port()
    directories, processes = [], []
    for index, ranks in enumerate(nodes):
        directory = root / f"tp2ep2-node{index}"
        directories.append(directory)
        id_option = ["--run-id", run_ids[index]] if run_ids[index] else []
        command = [*DUMPCMP, "run", "--patch", "example/moe_engine", "--dir", str(directory), *id_option, "--",
                   sys.executable, "-m", "tests.helpers.node_launch", "--ranks", ranks, "--world", "4",
                   "--port", str(port), *(["--elastic-id", elastic_id] if elastic_id else []), "--", *ENGINE]
        processes.append(subprocess.Popen(command, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    return directories


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    return demo_runs(example_runs_root(tmp_path_factory))[0]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nodes")
    run_nodes(root, run_ids=("nightly-7", "nightly-7"))
    return root


def test_a_glob_of_node_directories_is_one_run(two_nodes, baseline):
    pattern = str(two_nodes / "tp2ep2-node*")
    with open_run(pattern) as run:
        assert sorted(r.rank for r in run.ranks) == [0, 1, 2, 3] and not run.problems
        assert [Path(d).name for d in run.directories] == ["tp2ep2-node0", "tp2ep2-node1"]
    report = compare(baseline, pattern)
    assert report.exit_code == 0 and report.summary.passed == report.summary.total > 50
    parallel = compare(baseline, pattern, jobs=2)
    assert [(r.label, r.status) for r in parallel.results] == [(r.label, r.status) for r in report.results]


def test_cli_commands_take_the_quoted_glob(two_nodes, baseline):
    pattern = str(two_nodes / "tp2ep2-node*")
    listing = subprocess.run([*DUMPCMP, "ls", pattern, "--format", "json"], env=clean_env(), capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert [r["rank"] for r in data["ranks"]] == [0, 1, 2, 3] and data["complete"]
    compared = subprocess.run([*DUMPCMP, "compare", str(baseline), pattern], env=clean_env(), capture_output=True,
                              text=True, timeout=300)
    assert compared.returncode == 0, compared.stdout[-2000:] + compared.stderr[-2000:]
    checked = subprocess.run([*DUMPCMP, "check", pattern, "--format", "json"], env=clean_env(), capture_output=True,
                             text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    checks = {c["check"]: c for c in json.loads(checked.stdout)["checks"]}
    # The collective traces are found in the nodes' directories, not under the glob.
    assert checks["collectives"]["not_run"] is None and checks["collectives"]["checked"] > 0


def test_a_missing_node_is_reported_as_its_absent_ranks(two_nodes, baseline):
    pattern = str(two_nodes / "tp2ep2-node0*")  # node 1's directory left out
    with open_run(pattern) as run:
        assert "rank(s) 2, 3 of 4 are absent" in run.problems
    report = compare(baseline, pattern)
    assert report.exit_code != 0 and "rank(s) 2, 3 of 4 are absent" in report.problems["target"]


def test_directories_of_different_runs_are_refused(tmp_path, two_nodes):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    run_nodes(mixed, run_ids=("run-a", "run-b"))
    with pytest.raises(RunFormatError, match=r"the directories hold different runs \(run-a in .*; run-b in .*\)"):
        open_run(str(mixed / "tp2ep2-node*"))
    proc = subprocess.run([*DUMPCMP, "ls", str(mixed / "tp2ep2-node*")], env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1


RANK_SCRIPT = """
import os, torch, torch.distributed as dist
from dumper import dumper
dist.init_process_group("gloo", init_method="env://")
rank = dist.get_rank()
dumper.set_parallel(tp=(rank, dist.get_world_size()))
torch.manual_seed(0)
full = torch.randn(3, 8)
dumper.dump("hidden", full.chunk(dist.get_world_size(), dim=1)[rank].contiguous(), dims="t h[tp]")
dumper.step()
dumper.flush()
dist.barrier()
dist.destroy_process_group()
"""


def test_nodes_agree_on_the_launchers_run_id_without_being_told(tmp_path):
    """Ranks a launcher started (torchrun's rendezvous id, Slurm's job) need no --run-id to be one run."""
    assert launcher_run_id({"TORCHELASTIC_RUN_ID": "job 42"}) == "torchelastic-job_42"
    assert launcher_run_id({"TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "1"}) == "slurm-7.1"
    assert launcher_run_id({}) is None
    port = _port()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.node_launch", "--ranks", ranks, "--world", "4", "--port", str(port),
         "--elastic-id", "elastic-1", "--", sys.executable, "-c", RANK_SCRIPT],
        env=clean_env(DUMPCMP_DIR=str(tmp_path / f"node{index}")), stderr=subprocess.PIPE, text=True)
        for index, ranks in enumerate(("0,1", "2,3"))]
    for process in processes:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-2000:]
    ids = {json.loads((tmp_path / f"node{i}" / "run.json").read_text())["run_id"] for i in (0, 1)}
    assert ids == {"torchelastic-elastic-1"}
    with open_run(str(tmp_path / "node*")) as run:
        assert sorted(r.rank for r in run.ranks) == [0, 1, 2, 3] and not run.problems
        (record,) = [r for r in run.records if r.rank == 3]
        assert list(run.load(record).shape) == [3, 2]  # data read from the second node's directory
