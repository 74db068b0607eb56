"""The run format's bytes, pinned: a fixed set of dumps written by the real writer in a real process.

index.jsonl, index-summary.json, rank.json, run.json and the data file must come out byte for byte as the
files in tests/dumper/golden/, once what legitimately varies between two runs is set to
a constant: times, the process id, the host name and the generated run id (nothing
else is touched; rank.json's padding is checked separately). A change here changes
what every reader of a run sees: bump the schema version (dumper/format.py) or keep
the bytes.

Regenerate after an intended format change: ``python -m tests.dumper.test_golden``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.helpers.procs import dump_run

GOLDEN = Path(__file__).with_name("golden")
RANK_INFO_PAD = 8192  # rank.json is padded so that its last update fits on a full disk

# Every record kind the writer produces: dtypes (bf16, fp8, bool, int64, a 0-d float, an
# empty tensor, NaN/Inf), dims, call tags and sticky tags, a dumped tuple and a number, two steps;
# a complex tensor is refused with a warning and leaves no record.
DUMPS = """
import torch
from dumper import dumper

hidden = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8 - 0.5
dumper.dump("attn_out", hidden.to(torch.bfloat16), dims="t h[tp]", layer=0)
with dumper.tags(layer=1, phase="decode"):
    dumper.dump("router.topk", (torch.tensor([[1, 0], [2, 3], [0, 1]]), torch.ones(3, 2)), dims="t k")
    dumper.dump("scale", 0.125)
dumper.step()
dumper.dump("fp8", hidden.to(torch.float8_e4m3fn), dims="t (h d)")
dumper.dump("mask", torch.tensor([True, False, True]))
dumper.dump("empty", torch.zeros(0, 4))
dumper.dump("nan", torch.tensor([1.0, float("nan"), float("inf")], dtype=torch.float16))
dumper.dump("complex", torch.zeros(2, dtype=torch.complex64))
"""

_VARYING = [
    (re.compile(rb'"(start_time|time)": ?-?[0-9.e+-]+'), lambda m: b'"' + m.group(1) + b'":' + (b" " if b": " in m.group(0) else b"") + b"0"),
    (re.compile(rb'"pid": [0-9]+'), lambda m: b'"pid": 0'),
    (re.compile(rb'"host": "[^"]*"'), lambda m: b'"host": "HOST"'),
    (re.compile(rb'"run_id": "[0-9a-f]+"'), lambda m: b'"run_id": "RUN_ID"'),
    # NOTE: which records share a data file depends on when the writer thread wakes (it
    # writes what is queued): the file a record names is normalised, and the data files
    # are compared tensor by tensor (key, dtype, shape, bytes), not file by file.
    (re.compile(rb'"file":"data-[0-9]+\.safetensors"'), lambda m: b'"file":"DATA"'),
    # index-summary.json: the index's crc32 covers its times, and the summary's own check covers that crc.
    # Its size too: times are written with as many digits as they need.
    (re.compile(rb'"(crc32|check)": "[0-9a-f]{8}"'), lambda m: b'"' + m.group(1) + b'": "CRC32"'),
    (re.compile(rb'("index": \{\s*"bytes": )[0-9]+'), lambda m: m.group(1) + b"0"),
]
# Environment-dependent (versions, settings); pinned by tests/dumper/test_fingerprint.py.
NOT_PINNED = ("fingerprint.json",)


def normalise(data: bytes) -> bytes:
    for pattern, replacement in _VARYING:
        data = pattern.sub(replacement, data)
    return data


def _tensors_by_key(paths: list[Path]) -> bytes:
    """Every tensor of the data files, by key: a canonical text of (key, dtype, shape, bytes)."""
    import json
    import struct

    entries = []
    for path in paths:
        data = path.read_bytes()
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        header.pop("__metadata__", None)
        for key, entry in header.items():
            start, end = entry["data_offsets"]
            payload = data[8 + size + start:8 + size + end]
            entries.append((int(key), f"{key} {entry['dtype']} {entry['shape']} {payload.hex()}"))
    return "\n".join(text for _, text in sorted(entries)).encode()


def written_files(run_dir: Path, *, padded: bool = True) -> dict[str, bytes]:
    """The run's files by relative path, normalised; rank.json without its padding; data files by tensor."""
    files = {}
    data_files: dict[str, list[Path]] = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        if path.name in NOT_PINNED:
            continue
        if path.suffix == ".safetensors":
            data_files.setdefault(path.parent.relative_to(run_dir).as_posix(), []).append(path)
            continue
        data = path.read_bytes()
        if path.name == "rank.json":
            if padded:
                assert len(data) == RANK_INFO_PAD, f"rank.json is {len(data)} bytes, not padded to {RANK_INFO_PAD}"
            data = data.rstrip(b" ")
        files[path.relative_to(run_dir).as_posix()] = normalise(data) if path.suffix in (".json", ".jsonl") else data
    for directory, paths in data_files.items():
        files[f"{directory}/tensors by key"] = _tensors_by_key(paths)
    return files


def dump_fixed_run(run_dir: Path) -> dict[str, bytes]:
    # argv is ["-c"] for `python -c`: no path in the run's command.
    dump_run(run_dir, DUMPS)
    return written_files(run_dir)


def test_run_format_bytes_are_pinned(tmp_path):
    files = dump_fixed_run(tmp_path / "run")
    expected = written_files(GOLDEN, padded=False)
    assert sorted(files) == sorted(expected)
    for name, data in files.items():
        assert data == expected[name], f"{name} differs from tests/dumper/golden/{name}:\n{data[:2000]!r}"


def test_normalising_touches_only_what_varies():
    line = b'{"seq":0,"time":1796100593.7432518,"nbytes":12}'
    assert normalise(line) == b'{"seq":0,"time":0,"nbytes":12}'
    rank = b'{\n "pid": 7650,\n "rank": 0,\n "run_id": "a9632fac3888",\n "start_time": 1796100593.70\n}'
    assert normalise(rank) == b'{\n "pid": 0,\n "rank": 0,\n "run_id": "RUN_ID",\n "start_time": 0\n}'


def _write_golden() -> None:  # pragma: no cover - run by hand after an intended format change
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        dump_run(run_dir, DUMPS)
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name not in NOT_PINNED):
            name = path.relative_to(run_dir).as_posix()
            data = path.read_bytes()
            if path.name == "rank.json":
                data = data.rstrip(b" ")
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_bytes(normalise(data) if path.suffix in (".json", ".jsonl") else data)
    print(f"wrote the golden run under {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    _write_golden()
