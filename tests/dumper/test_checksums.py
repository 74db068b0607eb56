"""Checksums across run format versions: xxh3_64 runs (schema 2), crc32 runs (schema 1) still read and compare.

tests/dumper/golden_v1/ is a run written by the schema 1 writer (crc32 checksums), kept
byte for byte; tests/dumper/golden/ is today's. Both hold the same dumps
(tests/dumper/test_golden.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from comparator import compare
from dumper.checksums import algorithm_of, comparable, compute
from dumper.errors import RunFormatError
from dumper.reader import open_run
from tests.dumper.test_golden import DUMPS
from tests.helpers.procs import dump_run

GOLDEN_V1 = Path(__file__).with_name("golden_v1")


@pytest.fixture(scope="module")
def new_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("checksums") / "new"
    dump_run(run_dir, DUMPS)
    return run_dir


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _flip_last_data_byte(run_dir: Path) -> None:
    path = sorted((run_dir / "rank-00000").glob("*.safetensors"))[-1]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last tensor's data, not the header
    path.write_bytes(bytes(data))


def _as_stats_run(run_dir: Path) -> Path:
    """The same run as if dumped in stats mode: no data files, file and key null."""
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "mode": "stats"}))
    index = run_dir / "rank-00000" / "index.jsonl"
    lines = [json.loads(line) for line in index.read_text().splitlines()]
    index.write_text("".join(json.dumps({**line, "file": None, "key": None}) + "\n" for line in lines))
    for path in (run_dir / "rank-00000").glob("*.safetensors"):
        path.unlink()
    return run_dir


def test_new_runs_name_xxh3_and_are_verified_on_read(new_run, tmp_path):
    with open_run(new_run) as run:
        assert run.info.schema_version == 2 and run.info.checksum == "xxh3_64"
        with_data = [r for r in run.records if r.file is not None]
        assert len(with_data) == len(run.records) == 8
        assert all(algorithm_of(r.checksum) == "xxh3_64" and len(r.checksum) == len("xxh3_64:") + 16
                   for r in run.records)
        for record in with_data:
            run.load(record, verify=True)
    broken = _copy(new_run, tmp_path / "broken")
    _flip_last_data_byte(broken)
    with open_run(broken) as run:
        records = sorted((r for r in run.records if r.file is not None), key=lambda r: (r.file, int(r.key)))
        last = [r for r in records if r.file == records[-1].file and r.nbytes][-1]
        run.load(last)  # unverified: the bytes are read as they are
        with pytest.raises(RunFormatError, match=f"checksum mismatch for {last.name} seq {last.seq} \\(xxh3_64:"):
            run.load(last, verify=True)


def test_old_crc32_runs_still_read_and_verify(tmp_path):
    with open_run(GOLDEN_V1) as run:
        assert run.info.schema_version == 1 and run.info.checksum == "crc32"
        assert run.problems == []
        assert all(algorithm_of(r.checksum) == "crc32" for r in run.records)
        for record in run.records:
            run.load(record, verify=True)
    broken = _copy(GOLDEN_V1, tmp_path / "broken")
    _flip_last_data_byte(broken)
    with open_run(broken) as run:
        last = [r for r in run.records if r.nbytes][-1]
        with pytest.raises(RunFormatError, match=f"checksum mismatch for {last.name} seq {last.seq} \\(crc32:"):
            run.load(last, verify=True)


def test_an_unknown_checksum_algorithm_is_named_not_taken_for_a_mismatch(tmp_path):
    run_dir = _copy(GOLDEN_V1, tmp_path / "run")
    index = run_dir / "rank-00000" / "index.jsonl"
    index.write_text(index.read_text().replace('"checksum":"crc32:', '"checksum":"blake9:'))
    with open_run(run_dir) as run:
        record = run.records[0]
        with pytest.raises(RunFormatError, match="unknown checksum algorithm in 'blake9:.*upgrade dumpcmp"):
            run.load(record, verify=True)


def test_an_old_crc32_run_compares_with_a_new_xxh3_run(new_run, tmp_path):
    old = _copy(GOLDEN_V1, tmp_path / "old")
    for baseline, target in ((old, new_run), (new_run, old)):
        report = compare(baseline, target, verify_checksums=True)
        assert report.exit_code == 0, [(r.name, r.status, r.reason) for r in report.results]
        assert report.summary.passed == report.summary.total == 8
        assert all(not r.stats_only for r in report.results)


def test_stats_runs_of_different_checksum_algorithms_never_compare_checksums(new_run, tmp_path):
    old = _as_stats_run(_copy(GOLDEN_V1, tmp_path / "old"))
    new = _as_stats_run(_copy(new_run, tmp_path / "new"))
    report = compare(old, new)
    assert report.exit_code == 0 and report.summary.passed == report.summary.total
    # Different algorithms: no verdict from checksums (the same bytes have different checksums).
    assert all(r.stats_only and r.stats.checksum_match is None for r in report.results)
    same = compare(new, _as_stats_run(_copy(new_run, tmp_path / "again")))
    assert all(r.stats.checksum_match is True for r in same.results)
    # A rule demanding bitwise identity cannot be met from checksums of two algorithms, and says why.
    gate = tmp_path / "gate.yaml"
    gate.write_text("stats:\n  rules:\n    - {name: attn_out, checksum: true}\n")
    strict = compare(old, new, thresholds=str(gate))
    (attn,) = [r for r in strict.results if r.name == "attn_out"]
    assert attn.status == "fail" and "checksum algorithms" in attn.reason


def test_comparable_needs_one_named_algorithm():
    data = memoryview(b"dumpcmp")
    assert compute(data, "crc32") == "crc32:79202935"
    assert compute(data, "xxh3_64").startswith("xxh3_64:")
    assert comparable("crc32:00000001", "crc32:00000002")
    assert not comparable("crc32:00000001", "xxh3_64:0000000000000001")
    assert not comparable("", "") and not comparable("crc32:1", "")
    assert algorithm_of("0000abcd") == ""
