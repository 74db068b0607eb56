"""Many processes into one run directory; two runs into one directory are refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from dumper.reader import open_run
from tests.helpers.procs import clean_env

CHILD = """
import torch
from dumper import dumper
for step in range(3):
    for layer in range(4):
        dumper.dump("x", torch.full((128, 32), float(step * 100 + layer)), layer=layer)
    dumper.step()
"""


def start(run_dir, rank, world, **env):
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD)],
        env=clean_env(DUMPCMP_DIR=str(run_dir), RANK=str(rank), WORLD_SIZE=str(world), OMP_NUM_THREADS="1", **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_eight_processes_one_run(tmp_path):
    run_dir = tmp_path / "run"
    procs = [start(run_dir, rank, 8) for rank in range(8)]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0 and err == "", err
    with open_run(run_dir) as run:
        assert run.problems == []
        assert [r.rank for r in run.ranks] == list(range(8))
        assert len({r.info.run_id for r in run.ranks} | {run.info.run_id}) == 1
        for rank in run.ranks:
            assert len(rank.records) == 12 and rank.status == "closed"
            for record in rank.records:
                run.load(record, verify=True)


def test_two_runs_into_one_directory_refused_unless_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    first = [start(run_dir, rank, 2, DUMPCMP_RUN_ID="first") for rank in range(2)]
    second = [start(run_dir, rank, 2, DUMPCMP_RUN_ID="second") for rank in range(2)]
    results = [(p, *p.communicate(timeout=180)) for p in first + second]
    refusals = [err for _, _, err in results if "already holds an earlier run" in err]
    assert all(p.returncode == 0 for p, _, _ in results), "the engines themselves always finish"
    with open_run(run_dir) as run:
        winner = run.info.run_id
        assert {r.info.run_id for r in run.ranks} == {winner}, "ranks of two runs never mix"
        assert len(refusals) == 2, refusals
        assert [r.rank for r in run.ranks] == [0, 1]
    # Asked explicitly, a new run replaces the old one rank by rank.
    loser = "second" if winner == "first" else "first"
    again = [start(run_dir, rank, 2, DUMPCMP_RUN_ID=loser, DUMPCMP_OVERWRITE="1") for rank in range(2)]
    for proc in again:
        _, err = proc.communicate(timeout=180)
        assert err == ""
    with open_run(run_dir) as run:
        assert run.info.run_id == loser and {r.info.run_id for r in run.ranks} == {loser}
        assert run.problems == []
