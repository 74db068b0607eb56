"""Read directories written by SGLang's own dumper, as they are (file format: dumper/sglang_files.py)."""

from __future__ import annotations

import os

from dumper.errors import RunFormatError
from dumper.format import MAX_WORLD_SIZE, IndexRecord, TensorStats
from dumper.run import RankContents, Run
from dumper.sglang_files import as_tensor, find_experiment_dir, load_file, looks_like_sglang_file, parallel_axes, parse_file_name

# File-name tags that locate a record rather than identify the tensor.
_POSITION_TAGS = {"step", "rank", "dump_index", "name"}


def open_sglang_run(path: str) -> Run | None:
    """Return a Run for an SGLang dump directory, or None when ``path`` is not one."""
    experiment = find_experiment_dir(path)
    if experiment is None:
        return None
    problems: list[str] = []
    by_rank: dict[int, list[IndexRecord]] = {}
    for entry in sorted(os.listdir(experiment)):
        if not looks_like_sglang_file(entry):
            continue
        file_path = os.path.join(experiment, entry)
        try:
            data = load_file(file_path)
            tensor = as_tensor(data["value"], file_path)
        except RunFormatError as exc:
            problems.append(str(exc))
            continue
        meta = data.get("meta")
        if not isinstance(meta, dict):
            meta = {}
        file_tags = parse_file_name(entry)
        identity = {**file_tags, **{k: v for k, v in meta.items() if k in file_tags}}
        try:
            # NOTE: meta comes from the file: a world_size of 1e10 would reach the coverage
            # check's range(); every number is checked like an index field.
            rank, world_size, seq, step = (
                _count(meta.get("world_rank", identity.get("rank", 0)), "rank"),
                _count(meta.get("world_size", 1), "world_size"), _count(identity.get("dump_index", 0), "dump_index"),
                _count(identity.get("step", 0), "step"))
            if not 0 <= rank < world_size <= MAX_WORLD_SIZE:
                raise ValueError(f"rank {rank} outside world size {world_size} (at most {MAX_WORLD_SIZE})")
        except ValueError as exc:
            problems.append(f"{file_path}: {exc}; ignored")
            continue
        tags = {
            key: value
            for key, value in identity.items()
            if key not in _POSITION_TAGS and not key.endswith("_rank")
        }
        record = IndexRecord(
            seq=seq,
            step=step,
            name=str(identity.get("name", entry)),
            tags=tags,
            rank=rank,
            world_size=world_size,
            parallel=parallel_axes(meta),
            dtype=str(tensor.dtype).removeprefix("torch."),
            shape=tuple(tensor.shape),
            dims=meta.get("dims") if isinstance(meta.get("dims"), str) else None,
            stats=TensorStats(numel=tensor.numel(), min=None, max=None, mean=None, abs_mean=None, std=None, l2=None, nan=0, inf=0),
            checksum="",
            file=os.path.relpath(file_path, path),
            key="value",
            nbytes=tensor.numel() * tensor.element_size(),
            time=0.0,
            source="",
        )
        by_rank.setdefault(rank, []).append(record)
    if not by_rank:
        if problems:
            raise RunFormatError(f"{path}: no readable SGLang dump files ({problems[0]})")
        return None
    ranks = [
        RankContents(directory=f"rank={rank}", rank=rank, info=None, records=sorted(records, key=lambda r: r.seq))
        for rank, records in sorted(by_rank.items())
    ]
    return Run(path=path, info=None, ranks=ranks, problems=problems, format="sglang")


def _count(value: object, field: str) -> int:
    """A whole number from SGLang's meta or file name (ints, or text holding one)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{field} {value!r:.40} is not a whole number")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{field} {value!r:.40} is not a whole number") from None
    if not 0 <= number < 1 << 62:
        raise ValueError(f"{field} {number} is out of range")
    return number
