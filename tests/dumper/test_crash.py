"""A process killed with SIGKILL mid-run leaves a run whose completed records all read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from comparator.inspect.inventory import summarize_run
from dumper.reader import open_run
from dumper.stats import checksum
from tests.helpers.procs import clean_env

CHILD = """
import sys, torch
from dumper import dumper
step = 0
while True:
    for layer in range(4):
        dumper.dump("x", torch.full((256, 64), float(step * 10 + layer)), layer=layer)
    dumper.step()
    step += 1
    if step == 5:
        print("ready", flush=True)
"""


def test_sigkill_leaves_readable_records(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD)],
        env=clean_env(DUMPCMP_DIR=str(run_dir), DUMPCMP_FILE_MB="0.1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    index = run_dir / "rank-00000" / "index.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if index.exists() and index.read_bytes().count(b"\n") >= 20:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    with open_run(run_dir) as run:
        records = run.records
        assert len(records) >= 20
        for record in records:
            tensor = run.load(record, verify=True)
            assert checksum(tensor) == record.checksum
            assert float(tensor[0, 0]) == record.step * 10 + record.tags["layer"]
        # Records are a prefix of execution order: nothing in the middle is missing.
        assert [r.seq for r in records] == list(range(len(records)))
        summary = summarize_run(run)
    assert any("did not close" in p for p in summary.problems)
    # A torn trailing index line (the kill can land mid-write) is ignored, never fatal.
    with open(index, "a") as handle:
        handle.write('{"seq": 99999, "step"')
    with open_run(run_dir) as run:
        assert len(run.records) == len(records)
        assert any("torn" in p for p in run.problems)
    # No data file is left half-written under its final name.
    leftovers = [p.name for p in (run_dir / "rank-00000").iterdir() if p.name.endswith(".tmp")]
    for name in leftovers:
        assert name.endswith(".safetensors.tmp")
    json.loads((run_dir / "rank-00000" / "rank.json").read_text())
