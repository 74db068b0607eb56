"""Steady write-back of data files (dumper/steady_flush.py, ``DUMPCMP_FLUSH_MB``), on real files.

What is checked is behaviour, never timing: the files are the same bytes with flushing
on and off, the writer waits for old data before running further ahead than the lag,
and a failing flush call warns once, turns flushing off and loses nothing.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import torch

import dumper.steady_flush as steady_flush
from dumper.config import config_from_env
from dumper.errors import ConfigError
from dumper.reader import open_run
from tests.dumper.test_writer import Rank

TENSOR_BYTES = 256 << 10
TENSORS = 12  # 3 MB through files of 1 MB: 3 files, 4 tensors each


def _dump(tmp_path: Path, flush_bytes: int) -> Path:
    rank = Rank(tmp_path, file_bytes=4 * TENSOR_BYTES, queue_bytes=64 << 20)
    rank.writer.close()
    rank.writer = rank.open(file_bytes=4 * TENSOR_BYTES, queue_bytes=64 << 20, flush_bytes=flush_bytes)
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(TENSOR_BYTES // 4, generator=generator) for _ in range(TENSORS)]
    rank.writer.submit_many([rank.record(f"t{i}", t) for i, t in enumerate(tensors)])
    rank.writer.close()
    assert rank.failures == []
    return rank.run_dir


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


class Calls:
    """Counts the flush system calls and passes them on (or fails them, when told)."""

    def __init__(self, monkeypatch, fail: str | None = None) -> None:
        self.ranges: list[tuple[int, int, int]] = []  # (offset, length, flags)
        self.advised = 0
        real_range, real_advise = steady_flush._SYNC_RANGE, os.posix_fadvise

        def sync_range(fd, offset, length, flags):
            self.ranges.append((offset, length, flags))
            if fail == "sync_file_range":
                raise OSError(errno.EINVAL, "Invalid argument")
            if real_range is not None:
                real_range(fd, offset, length, flags)

        def advise(fd, offset, length, advice):
            self.advised += 1
            if fail == "posix_fadvise":
                raise OSError(errno.ESPIPE, "Illegal seek")
            real_advise(fd, offset, length, advice)

        monkeypatch.setattr(steady_flush, "_SYNC_RANGE", sync_range)
        monkeypatch.setattr(os, "posix_fadvise", advise)


def test_flushing_on_and_off_writes_the_same_files(tmp_path, monkeypatch):
    off = _dump(tmp_path / "off", 0)
    calls = Calls(monkeypatch)
    on = _dump(tmp_path / "on", 1 << 20)
    assert _files(on) == _files(off)
    assert len([n for n in _files(on) if n.endswith(".safetensors")]) == 3
    # It really flushed: write-back started for every byte of every file, old data waited for and dropped.
    started = sum(length for _, length, flags in calls.ranges if flags == steady_flush._START)
    data_bytes = sum(len(data) for name, data in _files(on).items() if name.endswith(".safetensors"))
    assert started == data_bytes
    assert any(flags == steady_flush._WAIT for _, _, flags in calls.ranges) and calls.advised > 0
    with open_run(on) as run:
        assert len(run.records) == TENSORS
        for record in run.records:
            run.load(record, verify=True)


def test_the_writer_runs_at_most_the_lag_ahead_of_what_it_waited_for(tmp_path, monkeypatch):
    calls = Calls(monkeypatch)
    lag = 1 << 20
    _dump(tmp_path, lag)
    chunk = max(4096, min(steady_flush._CHUNK, lag // 4))
    started = waited = 0
    for _, length, flags in calls.ranges:
        if flags == steady_flush._START:
            started += length
        else:
            waited += length
        # Everything but the last ``lag`` bytes requested (and one request) has been waited for.
        assert started - waited <= lag + max(chunk, TENSOR_BYTES) + 4096
    assert waited > 0


@pytest.mark.parametrize("failing", ["sync_file_range", "posix_fadvise"])
def test_a_failing_flush_warns_once_turns_flushing_off_and_loses_nothing(tmp_path, monkeypatch, caplog, failing):
    off = _dump(tmp_path / "off", 0)
    calls = Calls(monkeypatch, fail=failing)
    with caplog.at_level(logging.WARNING, logger="dumper.steady_flush"):
        on = _dump(tmp_path / "on", 1 << 20)
    warnings = [r.getMessage() for r in caplog.records if "steady flush" in r.getMessage()]
    assert len(warnings) == 1 and "turned off" in warnings[0] and "Error" in warnings[0]
    # Off after the first failure: no further calls of the failing kind.
    assert (len(calls.ranges) if failing == "sync_file_range" else calls.advised) == 1
    assert _files(on) == _files(off)  # rank.json says "closed": the engine never saw it


def test_the_setting():
    assert config_from_env({}).flush_bytes == 1024 << 20
    assert config_from_env({"DUMPCMP_FLUSH_MB": "0"}).flush_bytes == 0
    assert config_from_env({"DUMPCMP_FLUSH_MB": "64"}).flush_bytes == 64 << 20
    with pytest.raises(ConfigError, match="DUMPCMP_FLUSH_MB='fast' is not a number of megabytes"):
        config_from_env({"DUMPCMP_FLUSH_MB": "fast"})


def test_without_sync_file_range_whole_files_are_synced_behind_the_lag(tmp_path, monkeypatch):
    """Other systems than Linux: fdatasync of each file once it falls behind the lag; same bytes."""
    off = _dump(tmp_path / "off", 0)
    synced: list[int] = []
    real = getattr(os, "fdatasync", os.fsync)
    monkeypatch.setattr(steady_flush, "_SYNC_RANGE", None)
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1], raising=False)
    on = _dump(tmp_path / "on", 1 << 20)
    assert _files(on) == _files(off)
    assert 1 <= len(synced) < 3  # the files more than 1 MB behind the newest byte; not the last one
