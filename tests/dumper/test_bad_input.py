"""Each kind of bad input gets one clear message, and the engine always runs on."""

from __future__ import annotations

import json

import pytest

from dumper.config import config_from_env
from dumper.errors import ConfigError
from dumper.reader import open_run
from tests.helpers.procs import clean_env, run_python

ENGINE = """
import torch
from dumper import dumper
for step in range(3):
    dumper.dump("x", torch.ones(4) * step)
    dumper.step()
print("engine finished")
"""


def run_engine(tmp_path, **env):
    return run_python(ENGINE, env=clean_env(**env))


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DUMPCMP_MODE": "full"}, "DUMPCMP_MODE='full' is not a mode; valid modes: tensor, stats"),
        ({"DUMPCMP_QUEUE_MB": "lots"}, "DUMPCMP_QUEUE_MB='lots' is not a number of megabytes"),
        ({"DUMPCMP_OVERWRITE": "maybe"}, "DUMPCMP_OVERWRITE='maybe' is not a boolean"),
        ({"DUMPCMP_DIRR": "/x"}, "unknown setting DUMPCMP_DIRR; valid DUMPCMP_* variables: DUMPCMP_DIR,"),
        ({"DUMPCMP_FILTER": "step=x"}, "'x' in 'x' is not an integer"),
    ],
)
def test_bad_settings_warn_once_and_leave_dumping_off(tmp_path, env, message):
    with pytest.raises(ConfigError) as info:
        config_from_env({"DUMPCMP_DIR": str(tmp_path), **env})
    assert message in str(info.value)
    result = run_engine(tmp_path, DUMPCMP_DIR=str(tmp_path / "run"), **env)
    assert "engine finished" in result.stdout
    assert result.stderr.count("dumpcmp: dumping disabled") == 1
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_earlier_run_for_the_same_rank_is_refused_unless_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    run_engine(tmp_path, DUMPCMP_DIR=str(run_dir))
    second = run_engine(tmp_path, DUMPCMP_DIR=str(run_dir))
    assert "engine finished" in second.stdout
    assert second.stderr.count("\n") == 1
    assert "already holds an earlier run's files for rank 0" in second.stderr
    assert "DUMPCMP_OVERWRITE=1" in second.stderr
    # the explicit-run-id flavour (dumpcmp run sets DUMPCMP_RUN_ID)
    third = run_engine(tmp_path, DUMPCMP_DIR=str(run_dir), DUMPCMP_RUN_ID="another")
    assert "already holds an earlier run (run id" in third.stderr
    fourth = run_engine(tmp_path, DUMPCMP_DIR=str(run_dir), DUMPCMP_RUN_ID="another", DUMPCMP_OVERWRITE="1")
    assert fourth.stderr == ""
    with open_run(run_dir) as run:
        assert run.info.run_id == "another" and len(run.records) == 3 and run.problems == []


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_engine(tmp_path, DUMPCMP_DIR=str(blocker / "run"))
    assert "engine finished" in result.stdout
    assert "cannot create dump directory" in result.stderr
    assert result.stderr.count("dumpcmp:") == 1


def test_writer_failure_warns_once_and_engine_continues(tmp_path):
    run_dir = tmp_path / "run"
    code = """
    import errno, torch, dumper.writer as st
    from dumper import dumper
    real_save = st.write_safetensors
    calls = []
    def failing_save(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *a, **k)
    st.write_safetensors = failing_save
    for step in range(20):
        dumper.dump("x", torch.ones(1000) * step)
        dumper.flush()  # one data file per step, so the failure lands mid-run
        dumper.step()
    print("engine finished", dumper.enabled)
    """
    result = run_python(code, env=clean_env(DUMPCMP_DIR=str(run_dir)))
    assert "engine finished False" in result.stdout
    assert result.stderr.count("dumping disabled after an error (OSError") == 1
    info = json.loads((run_dir / "rank-00000" / "rank.json").read_text())
    assert info["status"] == "failed" and "No space left" in info["error"]
    with open_run(run_dir) as run:
        assert [r.step for r in run.records] == [0, 1]
        assert any("dumping stopped after an error" in p for p in run.problems)


def test_bounded_queue_blocks_instead_of_dropping(tmp_path):
    run_dir = tmp_path / "run"
    code = """
    import time, torch
    import dumper.writer as w
    from dumper import dumper
    real = w.RankWriter._prepare
    def slow(self, batch):
        time.sleep(0.02)
        return real(self, batch)
    w.RankWriter._prepare = slow
    for i in range(60):
        dumper.dump("x", torch.full((64 * 1024,), float(i)))  # 256 KB each
    """
    run_python(code, env=clean_env(DUMPCMP_DIR=str(run_dir), DUMPCMP_QUEUE_MB="1", DUMPCMP_FILE_MB="0.5"))
    with open_run(run_dir) as run:
        records = run.records
        assert len(records) == 60
        assert [float(run.load(r)[0]) for r in records] == [float(i) for i in range(60)]


def test_stats_mode_writes_only_the_index(tmp_path):
    run_dir = tmp_path / "run"
    run_engine(tmp_path, DUMPCMP_DIR=str(run_dir), DUMPCMP_MODE="stats")
    files = sorted(p.name for p in (run_dir / "rank-00000").iterdir())
    assert files == ["fingerprint.json", "index-summary.json", "index.jsonl", "rank.json"]  # no data file
    with open_run(run_dir) as run:
        assert run.mode == "stats"
        assert [r.stats.mean for r in run.records] == [0.0, 1.0, 2.0]
        assert all(r.checksum.startswith("xxh3_64:") and r.file is None for r in run.records)
