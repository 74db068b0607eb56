"""dumper/format.py and dumper/safetensors_io.py as modules: records, JSON files, data files."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open

from dumper.errors import RunFormatError
from dumper.format import (
    AxisInfo,
    IndexRecord,
    RankInfo,
    RecordHead,
    RunInfo,
    TensorStats,
    rewrite_json_in_place,
    write_json_atomic,
)
from dumper.safetensors_io import DTYPE_OF_CODE, SAFETENSORS_CODES, HeaderEntry, read_header, write_safetensors


def make_record(**changes) -> IndexRecord:
    fields = dict(seq=3, step=1, name="mlp.out", tags={"layer": 2, "ids": (1, 2)}, rank=1, world_size=2,
                  parallel={"tp": AxisInfo(rank=1, size=2)}, dtype="bfloat16", shape=(4, 8), dims="t h[tp]",
                  stats=TensorStats(numel=32, min=-1.0, max=1.0, mean=0.0, abs_mean=0.5, std=0.6, l2=3.2, nan=0, inf=0),
                  checksum="crc32:0000abcd", file="data-000000.safetensors", key="3", nbytes=64, time=12.5)
    return IndexRecord(**{**fields, **changes})


# ----------------------------------------------------------------------------- index records
def test_index_line_round_trips_and_tuples_in_tags_become_lists():
    record = make_record(graft="runs/base")
    line = record.to_json_line()
    assert "\n" not in line and '": ' not in line and '", ' not in line  # one compact line
    back = IndexRecord.from_json(json.loads(line), source="rank-00001")
    assert back == make_record(graft="runs/base", tags={"layer": 2, "ids": [1, 2]})
    assert back.source == "rank-00001"


def test_graft_is_written_only_when_set():
    assert "graft" not in json.loads(make_record().to_json_line())
    assert json.loads(make_record(graft="b").to_json_line())["graft"] == "b"


def test_an_index_record_completes_its_head():
    record = make_record()
    head = RecordHead(**record.head_fields())
    assert head.head_fields() == record.head_fields()
    assert set(record.head_fields()) == {"seq", "step", "name", "tags", "rank", "world_size", "parallel", "dims",
                                         "nbytes", "time", "graft"}


def test_nan_in_stats_cannot_reach_the_index():
    with pytest.raises(ValueError):
        make_record(stats=TensorStats(numel=1, min=float("nan"), max=None, mean=None, abs_mean=None, std=None,
                                      l2=None, nan=1, inf=0)).to_json_line()


@pytest.mark.parametrize(("change", "message"), [
    ({"shape": "4x8"}, "shape must be a list"),
    ({"shape": [4, -1]}, "negative size"),
    ({"rank": 2}, "rank 2 outside world size 2"),
    ({"seq": True}, "seq must be an integer"),
    ({"parallel": {"tp": {"rank": 2, "size": 2}}}, "parallel.tp: rank 2 outside size 2"),
    ({"tags": "layer=1"}, "tags must be an object"),
])
def test_bad_index_lines_name_the_field(change, message):
    data = {**json.loads(make_record().to_json_line()), **change}
    with pytest.raises(ValueError, match=message):
        IndexRecord.from_json(data)


def test_run_and_rank_info_round_trip_and_ignore_unknown_keys():
    run = RunInfo(schema_version=1, tool_version="0.1.0", run_id="abc", command=["python", "x.py"], mode="stats",
                  start_time=2.0, engine="vllm", world_size=4)
    assert RunInfo.from_json(json.loads(json.dumps(run.to_json()))) == run
    rank = RankInfo(rank=1, world_size=2, pid=10, host="h", argv=["a"], run_id="abc", start_time=1.0,
                    parallel={"tp": {"rank": 1, "size": 2}}, status="closed", records=7, lost={"x: why": 2})
    assert RankInfo.from_json({**rank.to_json(), "written_by_a_newer_version": 1}) == rank


# ----------------------------------------------------------------------------- JSON files
def test_padded_json_is_rewritten_in_place_without_growing(tmp_path):
    path = str(tmp_path / "rank.json")
    write_json_atomic(path, {"status": "running"}, pad_to=256)
    assert os.path.getsize(path) == 256
    rewrite_json_in_place(path, {"status": "failed", "error": "disk full"})
    assert os.path.getsize(path) == 256
    assert json.loads(open(path).read()) == {"status": "failed", "error": "disk full"}
    with pytest.raises(OSError, match="do not fit"):
        rewrite_json_in_place(path, {"error": "x" * 300})
    assert [name for name in os.listdir(tmp_path)] == ["rank.json"]  # no temporary file left behind


# ----------------------------------------------------------------------------- data files
ALL_DTYPES = [getattr(torch, name) for name in SAFETENSORS_CODES]


def test_dtype_codes_are_one_table_both_ways():
    assert {DTYPE_OF_CODE[code] for code in SAFETENSORS_CODES.values()} == set(SAFETENSORS_CODES)
    assert len(DTYPE_OF_CODE) == len(SAFETENSORS_CODES)


def test_written_files_are_standard_safetensors_bit_for_bit(tmp_path):
    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for number, dtype in enumerate(ALL_DTYPES):
        values = torch.randn(2, 3, generator=generator) * 50
        tensors[str(number)] = values > 0 if dtype == torch.bool else values.to(dtype)
    tensors["empty"] = torch.zeros(0, 5)
    tensors["scalar"] = torch.tensor(7, dtype=torch.int16)
    path = str(tmp_path / "data.safetensors")
    write_safetensors(tensors, path)
    with safe_open(path, framework="pt") as handle:  # the reference reader agrees
        assert sorted(handle.keys()) == sorted(tensors)
        for key, tensor in tensors.items():
            read = handle.get_tensor(key)
            assert read.dtype == tensor.dtype and read.shape == tensor.shape
            assert read.reshape(-1).view(torch.uint8).tolist() == tensor.reshape(-1).view(torch.uint8).tolist()
    header = read_header(path)
    assert header["scalar"] == HeaderEntry(dtype="int16", shape=(), offset=header["scalar"].offset, nbytes=2)
    assert (header["empty"].shape, header["empty"].nbytes) == ((0, 5), 0)
    assert min(entry.offset for entry in header.values()) % 8 == 0  # the data starts 8-byte aligned


def _raw_file(path, header: dict, data: bytes = b"") -> str:
    text = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + data)
    return str(path)


def test_header_problems_are_run_format_errors(tmp_path):
    with pytest.raises(RunFormatError, match="data file is missing"):
        read_header(str(tmp_path / "nothing.safetensors"))
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(RunFormatError, match="shorter than its header"):
        read_header(str(short))
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40))
    with pytest.raises(RunFormatError, match="header length"):
        read_header(str(huge))
    cut = _raw_file(tmp_path / "cut.safetensors", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(RunFormatError, match="truncated safetensors file"):
        read_header(cut)


def test_one_bad_entry_spoils_only_itself(tmp_path):
    path = _raw_file(tmp_path / "mixed.safetensors", {
        "good": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "unknown_dtype": {"dtype": "C64", "shape": [1], "data_offsets": [4, 12]},
        "backwards": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]},
        "__metadata__": {"format": "pt"},
    }, b"\0" * 12)
    header = read_header(path)
    assert isinstance(header["good"], HeaderEntry)
    assert isinstance(header["unknown_dtype"], RunFormatError) and isinstance(header["backwards"], RunFormatError)
    assert "__metadata__" not in header
