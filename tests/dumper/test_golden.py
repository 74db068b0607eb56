"""The run format's bytes, pinned: a fixed set of dumps written by the real writer in a real process.

index.jsonl, rank.json, run.json and the data file must come out byte for byte as the
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
]


def normalise(data: bytes) -> bytes:
    for pattern, replacement in _VARYING:
        data = pattern.sub(replacement, data)
    return data


def written_files(run_dir: Path) -> dict[str, bytes]:
    """The run's files by relative path, normalised; rank.json without its padding."""
    files = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "rank.json":
            assert len(data) == RANK_INFO_PAD, f"rank.json is {len(data)} bytes, not padded to {RANK_INFO_PAD}"
            data = data.rstrip(b" ")
        files[path.relative_to(run_dir).as_posix()] = normalise(data) if path.suffix in (".json", ".jsonl") else data
    return files


def dump_fixed_run(run_dir: Path) -> dict[str, bytes]:
    # argv is ["-c"] for `python -c`: no path in the run's command.
    dump_run(run_dir, DUMPS)
    return written_files(run_dir)


def test_run_format_bytes_are_pinned(tmp_path):
    files = dump_fixed_run(tmp_path / "run")
    expected = {p.relative_to(GOLDEN).as_posix(): p.read_bytes() for p in sorted(GOLDEN.rglob("*")) if p.is_file()}
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
        files = dump_fixed_run(Path(scratch) / "run")
    shutil.rmtree(GOLDEN, ignore_errors=True)
    for name, data in files.items():
        (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
        (GOLDEN / name).write_bytes(data)
    print(f"wrote {len(files)} files under {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    _write_golden()
