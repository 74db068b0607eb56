"""The baseline store: atomic promotion, the last N kept, and a complete baseline whatever kills it."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comparator.errors import GateError
from comparator.gate.store import BASELINES_DIR, POINTER_FILE, open_store
from dumper.reader import open_run
from tests.helpers.example_runs import dumpcmp
from tests.helpers.procs import clean_env


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_init_then_promote_keeps_the_last_n(gate_runs, tmp_path):
    store_path = tmp_path / "store"
    proc = dumpcmp("gate", "init", str(store_path), str(gate_runs["base"]))
    assert proc.returncode == 0, proc.stderr
    store = open_store(store_path)
    first = store.current_name()
    assert tree_digest(Path(store.current())) == tree_digest(gate_runs["base"])
    names = [store.promote(str(gate_runs["fp_tonight"]), keep=2) for _ in range(3)]
    assert store.baselines() == names[1:] and store.current_name() == names[-1]
    assert first not in store.baselines()
    assert (store_path / POINTER_FILE).read_text() == names[-1] + "\n"
    assert tree_digest(Path(store.current())) == tree_digest(gate_runs["fp_tonight"])


def test_a_missing_or_dangling_baseline_is_one_line(gate_runs, tmp_path):
    store_path = tmp_path / "store"
    store_path.mkdir()
    proc = dumpcmp("gate", str(store_path), str(gate_runs["fp_tonight"]), "-d", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr == (f"dumpcmp: error: {store_path}: the store has no baseline yet (CURRENT is missing); "
                           "seed it with: dumpcmp gate init STORE RUN\n")
    (store_path / POINTER_FILE).write_text("20261130T000000Z-gone\n")
    proc = dumpcmp("gate", str(store_path), str(gate_runs["fp_tonight"]), "-d", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "names baseline '20261130T000000Z-gone', which is missing from" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing compared, nothing written


def test_an_unwritable_store_is_one_line_before_any_comparison(gate_runs, tmp_path):
    store_path = tmp_path / "store"
    assert dumpcmp("gate", "init", str(store_path), str(gate_runs["base"])).returncode == 0
    command = [sys.executable, "-c", "from comparator.cli import main; main()", "gate", str(store_path),
               str(gate_runs["fp_tonight"]), "-d", str(tmp_path / "out")]
    if os.geteuid() == 0:
        # root writes through permission bits: mount the store read-only in a private mount namespace.
        script = (f"mount --bind {store_path} {store_path} && mount -o remount,bind,ro {store_path} && "
                  + " ".join(f"'{c}'" for c in command))
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=clean_env(), capture_output=True,
                              text=True, timeout=120)
        reason = "Read-only file system"
    else:
        store_path.chmod(0o555)
        proc = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=120)
        store_path.chmod(0o755)
        reason = "Permission denied"
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"dumpcmp: error: {store_path}: the baseline store is not writable ({reason}); "
                           "mount it read-write or give another --store\n")


PROMOTE_FOREVER = """
import sys
from comparator.gate.store import open_store
store = open_store(sys.argv[1])
runs = sys.argv[2:]
print("ready", flush=True)
i = 0
while True:
    store.promote(runs[i % 2], keep=2)
    i += 1
"""


def test_a_promotion_killed_at_any_point_leaves_a_complete_baseline(gate_runs, tmp_path):
    """SIGKILL at random points of back-to-back promotions (copy, rename, pointer, prune): every time,
    CURRENT names a baseline that is byte-for-byte one of the two runs, and the reader opens it."""
    store_path = tmp_path / "store"
    runs = [gate_runs["base"], gate_runs["fp_tonight"]]
    digests = [tree_digest(run) for run in runs]
    os.makedirs(store_path)
    open_store(store_path).promote(str(runs[0]), keep=2)
    rng = random.Random(20)
    trials, seen = 40, set()
    for _ in range(trials):
        child = subprocess.Popen([sys.executable, "-c", PROMOTE_FOREVER, str(store_path), *map(str, runs)],
                                 env=clean_env(), stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        store = open_store(store_path)
        current = Path(store.current())
        digest = tree_digest(current)
        assert digest in digests, f"CURRENT -> {current.name} is not a complete copy of either run"
        seen.add(digests.index(digest))
        with open_run(current) as run:
            assert not run.problems
    assert seen == {0, 1}  # the kills landed on both sides of a pointer swap
    # Kills between the rename and the prune leave extra baselines; the next whole promotion
    # prunes back to the newest two and clears what killed copies left in staging.
    store = open_store(store_path)
    names = store.baselines()
    final = store.promote(str(runs[1]), keep=2)
    assert store.baselines() == [names[-1], final] and store.current_name() == final
    assert os.listdir(store_path / ".staging") == []


def test_promote_refuses_keep_zero(gate_runs, tmp_path):
    with pytest.raises(GateError, match="keep at least 1"):
        open_store(tmp_path).promote(str(gate_runs["base"]), keep=0)
    assert not (tmp_path / POINTER_FILE).exists()
    shutil.rmtree(tmp_path / BASELINES_DIR, ignore_errors=True)
