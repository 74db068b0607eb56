"""A disk that fills up, or a writer slower than the engine: the engine finishes its work."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from dumper.reader import open_run
from tests.helpers.procs import clean_env, run_python

ENGINE = """
import torch
from dumper import dumper
for step in range(40):
    dumper.dump("hidden", torch.full((256, 256), float(step)))  # 256 KB a step
    dumper.flush()
    dumper.step()
print("engine finished", flush=True)
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs when we may mount one; otherwise a write wrapper with a quota."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True).returncode == 0
    yield mount_point, mounted
    if mounted:
        subprocess.run(["umount", str(mount_point)], check=False)


QUOTA_SHIM = """
import builtins, errno, os, dumper.writer as st
_limit = 2 << 20
_real_save = st.write_safetensors
def _quota_save(tensors, path, *a, **k):
    used = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.dirname(path)) for f in fs)
    need = sum(t.tensor.numel() * t.tensor.element_size() for t in tensors.values())
    if used + need > _limit:
        raise OSError(errno.ENOSPC, "No space left on device")
    return _real_save(tensors, path, *a, **k)
st.write_safetensors = _quota_save
"""


def test_disk_full_stops_dumping_with_one_warning(small_disk):
    mount_point, mounted = small_disk
    run_dir = mount_point / "run"
    code = ENGINE if mounted else QUOTA_SHIM + ENGINE
    result = run_python(code, env=clean_env(DUMPCMP_DIR=str(run_dir)))
    assert "engine finished" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("dumpcmp:")]
    assert len(warnings) == 1, result.stderr
    assert "dumping disabled after an error" in warnings[0] and "No space left on device" in warnings[0]
    info = json.loads((run_dir / "rank-00000" / "rank.json").read_text())
    assert info["status"] == "failed" and "No space left" in info["error"]
    with open_run(run_dir) as run:
        steps = [r.step for r in run.records]
        assert steps == list(range(len(steps))) and 0 < len(steps) < 40
        assert info["last_step"] == steps[-1], "rank.json says where dumping stopped"
        for record in run.records:
            run.load(record, verify=True)
        assert any(f"last step {steps[-1]}" in p for p in run.problems)
    leftovers = [n for n in os.listdir(run_dir / "rank-00000") if n.endswith(".tmp")]
    assert leftovers == [], "a failed data file must not keep its space"


def test_unwritable_directory_one_warning_engine_runs(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    (target / "run").write_text("a file where the run directory should be")
    result = run_python(ENGINE, env=clean_env(DUMPCMP_DIR=str(target / "run")))
    assert "engine finished" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("dumpcmp:")]
    assert len(warnings) == 1 and "cannot create dump directory" in warnings[0]


def test_slow_writer_makes_the_engine_wait_not_drop(tmp_path):
    run_dir = tmp_path / "run"
    code = """
    import time, torch
    import dumper.writer as w
    from dumper import dumper
    real = w.RankWriter._prepare
    def slow(self, batch):
        time.sleep(0.01 * len(batch))
        return real(self, batch)
    w.RankWriter._prepare = slow
    start = time.perf_counter()
    for i in range(40):
        dumper.dump("x", torch.full((32 * 1024,), float(i)))  # 128 KB each, 5 MB in all
    print(f"engine finished {time.perf_counter() - start:.3f}")
    """
    result = run_python(code, env=clean_env(DUMPCMP_DIR=str(run_dir), DUMPCMP_QUEUE_MB="0.5"))
    assert "engine finished" in result.stdout and result.stderr == ""
    with open_run(run_dir) as run:
        assert [float(run.load(r)[0]) for r in run.records] == [float(i) for i in range(40)]
