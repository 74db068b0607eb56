"""SIGKILL a multi-rank dumping run at random points: whatever was written reads back."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from comparator import compare
from comparator.inspect.inventory import summarize_run
from dumper.errors import DumpcmpError
from dumper.reader import open_run
from dumper.stats import checksum
from tests.helpers.procs import clean_env

TRIALS = 20
RANKS = 2

# One driver imports torch once and forks every rank of every trial, so that 20
# trials cost seconds, not minutes. Each forked rank dumps until it is killed.
DRIVER = """
import os, random, signal, sys, time
import torch
from dumper import dumper

root, trials, ranks, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)

def rank_main(run_dir, rank):
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(ranks)
    dumper.configure(dir=run_dir, run_id="crash", file_bytes=50 << 10)
    step = 0
    while True:
        for layer in range(3):
            dumper.dump("hidden", torch.full((64, 64), float(step * 10 + layer)), layer=layer)
        dumper.step()
        step += 1

for trial in range(trials):
    run_dir = os.path.join(root, f"trial-{trial}")
    pids = []
    for rank in range(ranks):
        pid = os.fork()
        if pid == 0:
            try:
                rank_main(run_dir, rank)
            finally:
                os._exit(1)
        pids.append(pid)
    # Kill each rank at its own random point (mid-write, between files, anywhere)
    # once it has started writing: on a loaded machine a rank can take a while.
    for rank, pid in enumerate(pids):
        index = os.path.join(run_dir, f"rank-{rank:05d}", "index.jsonl")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (os.path.exists(index) and os.path.getsize(index) > 0):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
print("done", flush=True)
"""


@pytest.mark.slow
def test_random_sigkills_lose_nothing_that_was_written(tmp_path):
    driver = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DRIVER), str(tmp_path), str(TRIALS), str(RANKS), "20261122"],
        env=clean_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )
    assert driver.stdout.strip() == "done", driver.stderr
    outcomes = {"records": 0, "runs_with_data": 0}
    for trial in range(TRIALS):
        run_dir = tmp_path / f"trial-{trial}"
        try:
            run = open_run(run_dir)
        except DumpcmpError:
            continue  # killed before the first record: a clean, typed refusal
        with run:
            for rank in run.ranks:
                seqs = [r.seq for r in rank.records]
                assert seqs == list(range(len(seqs))), f"trial {trial}: a gap in {rank.directory}"
                for record in rank.records:
                    tensor = run.load(record, verify=True)
                    assert checksum(tensor) == record.checksum
                    assert float(tensor[0, 0]) == record.step * 10 + record.tags["layer"]
                    outcomes["records"] += 1
            summary = summarize_run(run)
            assert summary.problems, "a killed run must be reported incomplete"
            assert any("did not close" in p for p in summary.problems)
            outcomes["runs_with_data"] += 1
        if outcomes["runs_with_data"] == 1:
            # compare works on a killed run and says it is incomplete, rank by rank.
            report = compare(run_dir, run_dir)
            assert report.exit_code in (0, 1, 3)
            assert any("did not close" in p for p in report.problems["target"])
    print(f"\ncrash trials: {TRIALS} x {RANKS} ranks killed, {outcomes['runs_with_data']} runs with data, "
          f"{outcomes['records']} records read back with valid checksums")
    assert outcomes["runs_with_data"] >= TRIALS // 2, outcomes
