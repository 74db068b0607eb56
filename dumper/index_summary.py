"""A rank's index, summarised: what ``dumpcmp ls`` shows, without decoding every line.

    RUN/rank-00000/index-summary.json     written by the dumper when the rank closes

NOTE: ``ls`` of a million-record run decoded every index line (tens of seconds, most of
a gigabyte) to show a table of a few thousand rows (issue 23). The summary holds, per
rank, the rows of that table (one per name and tags, with their steps, ranks, shapes
and bytes) and the rank's steps; the reader trusts it only when it matches the index
byte for byte (size and crc32 of the whole index) and its own crc32 holds. Anything
else (no summary: a run written before it, a rank killed before closing; a stale or
corrupt one) falls back to reading the index lines, with a warning for the last two.
The same function, :func:`summarize_records`, builds the summary at close
(dumper/index_summary_write.py) and from records read the slow way, so both paths show
the same thing.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from dumper.errors import DumpcmpError
from dumper.format import INDEX_FILE, IndexRecord
from dumper.format_fields import _int, _list, _mapping, _opt_str, _str
from dumper.safeio import JSON_LIMIT, open_regular, read_text

SUMMARY_FILE = "index-summary.json"
SUMMARY_VERSION = 1

log = logging.getLogger(__name__)

First = tuple[int, int, str, int]  # (step, rank, source, seq) of a record: the run's record order


@dataclass(frozen=True, kw_only=True)
class TensorGroup:
    """The records of one name and tags on one rank directory (every step)."""

    name: str
    tags: dict[str, Any]
    dtype: str  # of the group's first record (in record order)
    dims: str | None
    first: First
    shapes: tuple[tuple[tuple[int, ...], First], ...]  # distinct shapes, each with its first record
    steps: tuple[int, ...]
    ranks: tuple[int, ...]
    records: int
    bytes: int

    @property
    def key(self) -> tuple[str, str]:
        return group_key(self.name, self.tags)


@dataclass(frozen=True, kw_only=True)
class IndexSummary:
    records: int
    steps: tuple[int, ...]
    parallel: dict[str, dict[str, int]]  # of the first record in file order ({} without records)
    world_size: int | None  # of the first record in file order
    rank: int | None  # of the first record in file order
    has_data: bool  # some record points at a data file (tensor mode)
    tensors: tuple[TensorGroup, ...]


def group_key(name: str, tags: dict[str, Any]) -> tuple[str, str]:
    return name, repr(sorted(tags.items()))


def summarize_records(records: Sequence[IndexRecord]) -> IndexSummary:
    """The summary of one rank directory's records (any order)."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    steps: set[int] = set()
    has_data = False
    for record in records:
        first: First = (record.step, record.rank, record.source, record.seq)
        steps.add(record.step)
        has_data = has_data or record.file is not None
        key = group_key(record.name, record.tags)
        entry = groups.get(key)
        if entry is None:
            entry = groups[key] = {"name": record.name, "tags": record.tags, "dtype": record.dtype, "dims": record.dims,
                                   "first": first, "shapes": {}, "steps": set(), "ranks": set(), "records": 0, "bytes": 0}
        elif first < entry["first"]:
            entry.update(dtype=record.dtype, dims=record.dims, first=first)
        shape = tuple(record.shape)
        seen = entry["shapes"].get(shape)
        if seen is None or first < seen:
            entry["shapes"][shape] = first
        entry["steps"].add(record.step)
        entry["ranks"].add(record.rank)
        entry["records"] += 1
        entry["bytes"] += record.nbytes
    tensors = tuple(sorted(
        (TensorGroup(name=e["name"], tags=e["tags"], dtype=e["dtype"], dims=e["dims"], first=e["first"],
                     shapes=tuple(sorted(e["shapes"].items(), key=lambda item: item[1])),
                     steps=tuple(sorted(e["steps"])), ranks=tuple(sorted(e["ranks"])), records=e["records"],
                     bytes=e["bytes"])
         for e in groups.values()), key=lambda group: group.first))
    head = records[0] if records else None
    return IndexSummary(
        records=len(records), steps=tuple(sorted(steps)),
        parallel={axis: info.to_json() for axis, info in head.parallel.items()} if head is not None else {},
        world_size=head.world_size if head is not None else None, rank=head.rank if head is not None else None,
        has_data=has_data, tensors=tensors)


# ------------------------------------------------------------------------------------ on disk
def _ranges(values: Iterable[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for value in values:
        if out and value == out[-1][1] + 1:
            out[-1][1] = value
        else:
            out.append([value, value])
    return out


def _unranges(data: Any, what: str) -> tuple[int, ...]:
    values: list[int] = []
    for pair in _list(data, what):
        start, end = (_int(v, what) for v in _list(pair, what))
        if end < start or end - start > 1 << 24 or (values and start <= values[-1]):
            raise ValueError(f"{what}: bad range {pair!r:.40}")
        values.extend(range(start, end + 1))
    return tuple(values)


def _first_json(first: First) -> list[Any]:
    return [first[0], first[1], first[3]]  # the source is the directory the summary sits in


def _first(data: Any, source: str) -> First:
    step, rank, seq = (_int(v, "first") for v in _list(data, "first"))
    return step, rank, source, seq


def to_json(summary: IndexSummary, *, index_bytes: int, index_crc32: int) -> dict[str, Any]:
    body = {
        "version": SUMMARY_VERSION,
        "index": {"bytes": index_bytes, "crc32": f"{index_crc32:08x}"},
        "records": summary.records, "steps": _ranges(summary.steps), "parallel": summary.parallel,
        "world_size": summary.world_size, "rank": summary.rank, "has_data": summary.has_data,
        "tensors": [{"name": g.name, "tags": g.tags, "dtype": g.dtype, "dims": g.dims, "first": _first_json(g.first),
                     "shapes": [[list(shape), _first_json(first)] for shape, first in g.shapes],
                     "steps": _ranges(g.steps), "ranks": list(g.ranks), "records": g.records, "bytes": g.bytes}
                    for g in summary.tensors],
    }
    body["check"] = f"{_body_crc32(body):08x}"
    return body


def _body_crc32(body: dict[str, Any]) -> int:
    text = json.dumps({k: v for k, v in body.items() if k != "check"}, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    return zlib.crc32(text.encode("utf-8"))


def from_json(data: Any, *, source: str) -> tuple[IndexSummary, int, int]:
    """Validate a parsed summary file; returns it with the index size and crc32 it describes (ValueError if bad)."""
    data = _mapping(data, "summary")
    if data.get("version") != SUMMARY_VERSION:
        raise ValueError(f"summary version {data.get('version')!r}, this dumpcmp reads {SUMMARY_VERSION}")
    if data.get("check") != f"{_body_crc32(data):08x}":
        raise ValueError("its own checksum does not match (corrupt)")
    index = _mapping(data.get("index"), "index")
    tensors = []
    for entry in _list(data.get("tensors"), "tensors"):
        entry = _mapping(entry, "tensors[]")
        shapes = tuple((tuple(_int(size, "shape") for size in _list(shape, "shape")), _first(first, source))
                       for shape, first in (_list(pair, "shapes[]") for pair in _list(entry.get("shapes"), "shapes")))
        tensors.append(TensorGroup(
            name=_str(entry.get("name"), "name"), tags=dict(_mapping(entry.get("tags"), "tags")),
            dtype=_str(entry.get("dtype"), "dtype"), dims=_opt_str(entry.get("dims"), "dims"),
            first=_first(entry.get("first"), source), shapes=shapes, steps=_unranges(entry.get("steps"), "steps"),
            ranks=tuple(_int(r, "ranks") for r in _list(entry.get("ranks"), "ranks")),
            records=_int(entry.get("records"), "records"), bytes=_int(entry.get("bytes"), "bytes")))
    parallel = {str(axis): {"rank": _int(_mapping(info, "parallel").get("rank"), "parallel"),
                            "size": _int(_mapping(info, "parallel").get("size"), "parallel")}
                for axis, info in _mapping(data.get("parallel"), "parallel").items()}
    world_size, rank = data.get("world_size"), data.get("rank")
    summary = IndexSummary(
        records=_int(data.get("records"), "records"), steps=_unranges(data.get("steps"), "steps"), parallel=parallel,
        world_size=None if world_size is None else _int(world_size, "world_size"),
        rank=None if rank is None else _int(rank, "rank"),
        has_data=data.get("has_data") is True, tensors=tuple(tensors))
    if sum(g.records for g in summary.tensors) != summary.records:
        raise ValueError("its tensors do not add up to its record count")
    return summary, _int(index.get("bytes"), "index.bytes"), int(_str(index.get("crc32"), "index.crc32"), 16)


def index_fingerprint(index_path: str, *, root: str | None = None) -> tuple[int, int]:
    """(bytes, crc32) of an index file: what a summary must describe to be trusted."""
    from dumper.safeio import INDEX_LIMIT

    crc, size = 0, 0
    with open_regular(index_path, limit=INDEX_LIMIT, what="index", root=root) as handle:
        while chunk := handle.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def load_summary(rank_dir: str, *, source: str, root: str | None = None) -> IndexSummary | None:
    """The rank's summary if present and matching its index; None (the caller reads the index) otherwise."""
    path = os.path.join(rank_dir, SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    try:
        summary, size, crc = from_json(json.loads(read_text(path, limit=JSON_LIMIT, what="index summary", root=root)),
                                       source=source)
        found = index_fingerprint(os.path.join(rank_dir, INDEX_FILE), root=root)
    except (OSError, ValueError, TypeError, KeyError, RecursionError, DumpcmpError) as exc:
        log.warning("%s: ignored, reading the index lines instead (%s)", path, str(exc)[:200])
        return None
    if found != (size, crc):
        log.warning("%s: ignored, reading the index lines instead (stale: it describes %d bytes of index with crc32 "
                    "%08x, the index has %d bytes with crc32 %08x)", path, size, crc, found[0], found[1])
        return None
    return summary


def remove_summary(rank_dir: str) -> None:
    try:
        os.unlink(os.path.join(rank_dir, SUMMARY_FILE))
    except FileNotFoundError:
        pass
