"""The run directory format: names, versions and the typed index record.

Layout (documented in docs/format.md)::

    RUN/run.json                  RunInfo: schema, tool version, command, start time
    RUN/rank-00000/rank.json      RankInfo: who wrote this rank, and how it ended
    RUN/rank-00000/index.jsonl    one IndexRecord per line, in execution order
    RUN/rank-00000/data-*.safetensors   tensor data, several records per file

Everything is JSON or safetensors; nothing is ever pickled.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

from dumper.format_fields import (  # noqa: F401 - re-exported: the run format's readers and writers
    _choice,
    _float,
    _int,
    _json_default,
    _list,
    _mapping,
    _opt_float,
    _opt_str,
    _str,
    _world_size,
    finite_or_none,
    rewrite_json_in_place,
    write_json_atomic,
)

# 2: records' checksums are xxh3_64 (``checksum`` in run.json names the algorithm);
# 1: crc32. Readers read both (dumper/checksums.py).
SCHEMA_VERSION = 2
TOOL_VERSION = "0.1.0"

RUN_INFO_FILE = "run.json"
RANK_INFO_FILE = "rank.json"
INDEX_FILE = "index.jsonl"
RANK_DIR_PREFIX = "rank-"
PROC_DIR_PREFIX = "proc-"  # a process whose rank 0 was already claimed: keyed by pid


def rank_dir_name(rank: int) -> str:
    return f"{RANK_DIR_PREFIX}{rank:05d}"


def data_file_name(number: int) -> str:
    return f"data-{number:06d}.safetensors"


@dataclass(frozen=True, kw_only=True, slots=True)
class AxisInfo:
    rank: int
    size: int

    def to_json(self) -> dict[str, int]:
        return {"rank": self.rank, "size": self.size}


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorStats:
    """Summary statistics of one tensor, over its finite values, in float64.

    ``min``/``max``/``mean``/... are ``None`` when the tensor has no finite value.
    """

    numel: int
    min: float | None
    max: float | None
    mean: float | None
    abs_mean: float | None
    std: float | None
    l2: float | None
    nan: int
    inf: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "TensorStats":
        data = _mapping(data, "stats")
        return cls(
            numel=_int(data.get("numel", 0), "stats.numel"),
            **{name: _opt_float(data.get(name), f"stats.{name}") for name in ("min", "max", "mean", "abs_mean", "std", "l2")},
            nan=_int(data.get("nan", 0), "stats.nan"),
            inf=_int(data.get("inf", 0), "stats.inf"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordHead:
    """What is known of a record when the engine calls dump(); the writer completes it."""

    seq: int
    step: int
    name: str
    tags: dict[str, Any]
    rank: int
    world_size: int
    parallel: dict[str, AxisInfo]
    dims: str | None
    nbytes: int
    time: float  # seconds since the epoch, when the engine called dump()
    # The baseline run whose value the engine went on with here (``dumpcmp run --graft``);
    # optional in the index: absent when nothing was grafted, and in runs written before it.
    graft: str | None = None

    def head_fields(self) -> dict[str, Any]:
        """The head's fields by name (shallow: tags and parallel are shared, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(RecordHead)}


@dataclass(frozen=True, kw_only=True, slots=True)
class IndexRecord(RecordHead):
    """One dumped tensor, as one line of ``index.jsonl``: its head and what the writer measured."""

    dtype: str  # torch dtype name without the "torch." prefix, e.g. "bfloat16"
    shape: tuple[int, ...]
    stats: TensorStats
    checksum: str  # "ALGORITHM:hex" over the tensor's raw bytes (C order): crc32 (schema 1), xxh3_64 (2)
    file: str | None  # data file, relative to the rank directory; None in stats mode
    key: str | None  # safetensors key inside ``file``
    # Set by the reader, never written: which directory the record came from.
    source: str = field(default="", compare=False)

    @property
    def identity(self) -> tuple[str, int, tuple[tuple[str, str], ...]]:
        """Name, step and tags: what makes records on different ranks one logical tensor."""
        return (self.name, self.step, tuple(sorted((k, json.dumps(v)) for k, v in self.tags.items())))

    def to_json_line(self) -> str:
        data = {
            "seq": self.seq,
            "step": self.step,
            "name": self.name,
            "tags": self.tags,
            "rank": self.rank,
            "world_size": self.world_size,
            "parallel": {axis: info.to_json() for axis, info in self.parallel.items()},
            "dtype": self.dtype,
            "shape": list(self.shape),
            "dims": self.dims,
            "stats": self.stats.to_json(),
            "checksum": self.checksum,
            "file": self.file,
            "key": self.key,
            "nbytes": self.nbytes,
            "time": self.time,
        }
        if self.graft is not None:
            data["graft"] = self.graft
        return json.dumps(data, separators=(",", ":"), allow_nan=False, default=_json_default)

    @classmethod
    def from_json(cls, data: Any, *, source: str = "", shared: "SharedParts | None" = None) -> "IndexRecord":
        """Validate one parsed index line; raises ValueError naming the bad field.

        ``shared``: a reader's table of the parts that repeat across records (names,
        tags, parallel axes, dtypes, dims), so that a million records hold each once.
        """
        if shared is not None:
            record = shared.fast_record(data, source)
            if record is not None:
                return record
        data = _mapping(data, "record")
        shape = data.get("shape")
        if not isinstance(shape, list) or len(shape) > 64:
            raise ValueError(f"shape must be a list of at most 64 sizes, not {shape!r:.40}")
        sizes = tuple(_int(size, "shape") for size in shape)
        if any(size < 0 for size in sizes):
            raise ValueError(f"negative size in shape {list(sizes)}")
        parallel = {}
        for axis, info in _mapping(data.get("parallel") or {}, "parallel").items():
            info = _mapping(info, f"parallel.{axis}")
            axis_rank, axis_size = _int(info.get("rank"), f"parallel.{axis}.rank"), _int(info.get("size"), f"parallel.{axis}.size")
            if not 0 <= axis_rank < axis_size:
                raise ValueError(f"parallel.{axis}: rank {axis_rank} outside size {axis_size}")
            parallel[str(axis)] = AxisInfo(rank=axis_rank, size=axis_size)
        rank = _int(data.get("rank"), "rank")
        world_size = _int(data.get("world_size", 1), "world_size")
        if not 0 <= rank < world_size or world_size > 1 << 20:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        return cls(
            seq=_int(data.get("seq"), "seq"),
            step=_int(data.get("step"), "step"),
            name=_str(data.get("name"), "name"),
            tags=dict(_mapping(data.get("tags") or {}, "tags")),
            rank=rank,
            world_size=world_size,
            parallel=parallel,
            dtype=_str(data.get("dtype"), "dtype"),
            shape=sizes,
            dims=_opt_str(data.get("dims"), "dims"),
            stats=TensorStats.from_json(data.get("stats") or {}),
            checksum=_str(data.get("checksum", ""), "checksum"),
            file=_opt_str(data.get("file"), "file"),
            key=_opt_str(data.get("key"), "key"),
            nbytes=_int(data.get("nbytes", 0), "nbytes"),
            time=_float(data.get("time", 0.0), "time"),
            graft=_opt_str(data.get("graft"), "graft"),
            source=source,
        )


from dumper.format_fields import MAX_WORLD_SIZE  # noqa: E402 - kept beside the limits it goes with
_INT_LIMIT = 1 << 62
_STATS_FLOATS = ("min", "max", "mean", "abs_mean", "std", "l2")


class SharedParts:
    """The index's repeated parts, interned, and a fast path for well-formed lines.

    NOTE: 1M records took 12 GB and minutes to read (issue 23): each record held its
    own tags dict, parallel dict, AxisInfo objects and strings, and went through one
    validating call per field. ``fast_record`` accepts exactly what ``from_json``
    accepts (same types, same ranges) with inline checks, and returns None for
    anything else, so the slow path still names the bad field. The shared tags and
    parallel dicts are the reader's: callers must not mutate a record's dicts.
    """

    __slots__ = ("_parallel", "_shapes", "_strings", "_tags")

    def __init__(self) -> None:
        self._strings: dict[str, str] = {}
        self._shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._tags: dict[str, dict[str, Any]] = {}
        self._parallel: dict[tuple[tuple[str, int, int], ...], dict[str, AxisInfo]] = {}

    def string(self, value: str) -> str:
        return self._strings.setdefault(value, value)

    def fast_record(self, data: Any, source: str) -> "IndexRecord | None":
        if type(data) is not dict:
            return None
        get = data.get
        seq, step, rank, world_size = get("seq"), get("step"), get("rank"), get("world_size", 1)
        nbytes, when = get("nbytes", 0), get("time", 0.0)
        name, dtype, checksum = get("name"), get("dtype"), get("checksum", "")
        dims, file, key, graft = get("dims"), get("file"), get("key"), get("graft")
        shape, tags, parallel, stats = get("shape"), get("tags") or {}, get("parallel") or {}, get("stats") or {}
        if not (type(seq) is int and type(step) is int and type(rank) is int and type(world_size) is int
                and type(nbytes) is int and type(name) is str and type(dtype) is str and type(checksum) is str
                and (type(when) is float or type(when) is int) and type(shape) is list and len(shape) <= 64
                and type(tags) is dict and type(parallel) is dict and type(stats) is dict
                and (dims is None or type(dims) is str) and (file is None or type(file) is str)
                and (key is None or type(key) is str) and (graft is None or type(graft) is str)):
            return None
        if not (-_INT_LIMIT < seq < _INT_LIMIT and -_INT_LIMIT < step < _INT_LIMIT and -_INT_LIMIT < nbytes < _INT_LIMIT
                and 0 <= rank < world_size <= MAX_WORLD_SIZE):
            return None
        for size in shape:
            if type(size) is not int or not 0 <= size < _INT_LIMIT:
                return None
        axes = self._axes(parallel)
        if axes is None:
            return None
        numel, nan, inf = stats.get("numel", 0), stats.get("nan", 0), stats.get("inf", 0)
        if not (type(numel) is int and type(nan) is int and type(inf) is int
                and -_INT_LIMIT < numel < _INT_LIMIT and -_INT_LIMIT < nan < _INT_LIMIT and -_INT_LIMIT < inf < _INT_LIMIT):
            return None
        floats = []
        for field_name in _STATS_FLOATS:
            value = stats.get(field_name)
            if value is None or type(value) is float:
                floats.append(value)
            elif type(value) is int:
                floats.append(float(value))
            else:
                return None
        intern = self.string
        tags_key = repr(tags) if all(type(v) in (int, str, bool, float) or v is None for v in tags.values()) else None
        shared_tags = tags if tags_key is None else self._tags.setdefault(tags_key, tags)
        return IndexRecord(
            seq=seq, step=step, name=intern(name), tags=shared_tags, rank=rank, world_size=world_size,
            parallel=axes, dtype=intern(dtype), shape=self._shapes.setdefault(sizes := tuple(shape), sizes),
            dims=None if dims is None else intern(dims),
            stats=TensorStats(numel=numel, min=floats[0], max=floats[1], mean=floats[2], abs_mean=floats[3],
                              std=floats[4], l2=floats[5], nan=nan, inf=inf),
            checksum=checksum, file=None if file is None else intern(file), key=key, nbytes=nbytes,
            time=float(when), graft=graft, source=intern(source),
        )

    def _axes(self, parallel: dict[str, Any]) -> dict[str, AxisInfo] | None:
        flat = []
        for axis, info in parallel.items():
            if type(info) is not dict:
                return None
            axis_rank, axis_size = info.get("rank"), info.get("size")
            if not (type(axis_rank) is int and type(axis_size) is int and 0 <= axis_rank < axis_size < _INT_LIMIT):
                return None
            flat.append((axis, axis_rank, axis_size))
        key = tuple(flat)
        axes = self._parallel.get(key)
        if axes is None:
            axes = self._parallel[key] = {self.string(a): AxisInfo(rank=r, size=n) for a, r, n in flat}
        return axes


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    schema_version: int
    tool_version: str
    run_id: str
    command: list[str]
    mode: str
    start_time: float
    engine: str | None = None
    world_size: int | None = None
    # The algorithm of the records' checksums (dumper/checksums.py); absent in schema 1 runs: crc32.
    checksum: str = "crc32"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunInfo":
        world_size = data.get("world_size")
        schema_version = _int(data["schema_version"], "schema_version")
        return cls(
            schema_version=schema_version,
            tool_version=str(data.get("tool_version", "?")),
            run_id=_str(data.get("run_id", ""), "run_id"),
            command=[str(part) for part in _list(data.get("command") or [], "command")],
            mode=_choice(data.get("mode", "tensor"), "mode", ("tensor", "stats")),
            start_time=_float(data.get("start_time", 0.0), "start_time"),
            engine=_opt_str(data.get("engine"), "engine"),
            world_size=None if world_size is None else _world_size(world_size),
            checksum=_str(data.get("checksum", "crc32" if schema_version < 2 else "xxh3_64"), "checksum"),
        )


@dataclass(frozen=True, kw_only=True)
class RankInfo:
    rank: int
    world_size: int
    pid: int
    host: str
    argv: list[str]
    run_id: str
    start_time: float
    parallel: dict[str, dict[str, int]]
    status: str  # "running", "closed", "failed"
    records: int = 0
    last_step: int | None = None
    error: str | None = None
    # "name: reason" -> count of dump calls that could not be recorded.
    lost: dict[str, int] = field(default_factory=dict)
    # Online divergence (dumper/online.py): the comparison against a baseline, and
    # where this rank switched from stats to tensor data (None: it never did).
    online: dict[str, Any] | None = None
    escalation: dict[str, Any] | None = None
    # Dumps under CUDA-graph capture (dumper/cudagraph.py): which sites fired, how often
    # they were emitted after replays, which were lost and why. None: no graph dumps.
    graphs: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RankInfo":
        """Validate every field's type and range (raises ValueError naming the field).

        NOTE: a world size of 1e10 used to reach ``range(world_size)`` in the coverage
        check (hang, then out of memory); every number here is bounded.
        """
        world_size = _world_size(data.get("world_size", 1))
        rank = _int(data.get("rank"), "rank")
        if not 0 <= rank < MAX_WORLD_SIZE:  # beyond world_size: the coverage check names it
            raise ValueError(f"rank {rank} outside 0..{MAX_WORLD_SIZE - 1}")
        lost = _mapping(data.get("lost") or {}, "lost")
        last_step = data.get("last_step")
        checked = dict(
            rank=rank,
            world_size=world_size,
            pid=_int(data.get("pid", 0), "pid"),
            host=_str(data.get("host", ""), "host"),
            argv=[str(part) for part in _list(data.get("argv") or [], "argv")],
            run_id=_str(data.get("run_id", ""), "run_id"),
            start_time=_float(data.get("start_time", 0.0), "start_time"),
            parallel=dict(_mapping(data.get("parallel") or {}, "parallel")),
            status=_choice(data.get("status"), "status", ("running", "closed", "failed")),
            records=_int(data.get("records", 0), "records"),
            last_step=None if last_step is None else _int(last_step, "last_step"),
            error=_opt_str(data.get("error"), "error"),
            lost={str(reason): _int(count, "lost") for reason, count in lost.items()},
            online=None if data.get("online") is None else dict(_mapping(data["online"], "online")),
            escalation=None if data.get("escalation") is None else dict(_mapping(data["escalation"], "escalation")),
        )
        for extra in dataclasses.fields(cls):  # sections added later (graphs, ...): objects or null
            if extra.name not in checked and data.get(extra.name) is not None:
                checked[extra.name] = dict(_mapping(data[extra.name], extra.name))
        return cls(**checked)  # type: ignore[arg-type]
