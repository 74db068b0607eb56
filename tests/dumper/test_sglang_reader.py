"""SGLang dump directories are read as they are, without ever unpickling objects."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from dumper.errors import RunNotFoundError
from dumper.reader import open_run


def write_sglang_dump(exp_dir, *, step, rank, dump_index, name, value, world_size=2, dims=None, tp=(0, 2), **tags):
    """Write one file exactly as SGLang's dumper names and fills it."""
    file_tags = dict(step=step, rank=rank, dump_index=dump_index, name=name, **tags)
    file_name = "___".join(f"{k}={v}" for k, v in file_tags.items()) + ".pt"
    meta = dict(
        **file_tags,
        world_rank=rank,
        world_size=world_size,
        sglang_parallel_info={
            "tp_rank": tp[0], "tp_size": tp[1], "pp_rank": 0, "pp_size": 1,
            "moe_ep_rank": 0, "moe_ep_size": 1, "attn_dp_rank": 0, "attn_dp_size": 1,
            "enable_dp_attention": False,
        },
    )
    if dims is not None:
        meta["dims"] = dims
    os.makedirs(exp_dir, exist_ok=True)
    torch.save({"value": value, "meta": meta}, os.path.join(exp_dir, file_name))


@pytest.fixture
def sglang_dir(tmp_path):
    exp = tmp_path / "dump" / "sglang_dump_20261122_120000_000123"
    index = 0
    for step in range(2):
        for rank in range(2):
            for layer in range(2):
                index += 1
                write_sglang_dump(
                    exp, step=step, rank=rank, dump_index=index, name="mlp_output",
                    value=torch.full((5, 4), float(step * 100 + rank * 10 + layer)),
                    dims="t h # tp:replicated", tp=(rank, 2), recompute_status="disabled", layer_id=layer,
                )
    return tmp_path / "dump"


def test_reads_records_tags_and_parallel_info(sglang_dir):
    with open_run(sglang_dir) as run:
        assert run.format == "sglang" and run.problems == []
        assert [r.rank for r in run.ranks] == [0, 1]
        records = run.records
        assert len(records) == 8
        first = records[0]
        assert first.name == "mlp_output" and first.step == 0 and first.rank == 0
        assert first.tags == {"recompute_status": "disabled", "layer_id": 0}
        assert first.dims == "t h # tp:replicated"
        assert first.parallel["tp"].rank == 0 and first.parallel["tp"].size == 2
        assert first.world_size == 2 and first.shape == (5, 4) and first.dtype == "float32"
        for record in records:
            value = run.load(record)
            assert float(value[0, 0]) == record.step * 100 + record.rank * 10 + record.tags["layer_id"]
        # The same logical tensor on both ranks shares an identity (dump_index is not part of it).
        identities = {(r.identity, r.rank) for r in records}
        assert len({i for i, _ in identities}) == 4


def test_pickled_objects_are_refused_not_executed(sglang_dir, tmp_path):
    exp = next(sglang_dir.iterdir())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(exp / "step=0___rank=0___dump_index=99___name=evil.pt", "wb") as handle:
        pickle.dump({"value": Evil(), "meta": {}}, handle)
    with open_run(sglang_dir) as run:
        assert not marker.exists()
        assert len(run.records) == 8
        (problem,) = run.problems
        assert "dump_index=99___name=evil.pt: " in problem


def test_several_experiments_must_be_chosen(sglang_dir):
    other = sglang_dir / "sglang_dump_other"
    write_sglang_dump(other, step=0, rank=0, dump_index=1, name="x", value=torch.ones(2))
    with pytest.raises(RunNotFoundError, match="holds several SGLang experiments"):
        open_run(sglang_dir)
    with open_run(other) as run:
        assert [r.name for r in run.records] == ["x"]
