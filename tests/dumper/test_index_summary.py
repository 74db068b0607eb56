"""dumper/index_summary.py: the summary a closing rank writes beside its index, and how ``ls`` trusts it."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from comparator.inspect.inventory import summarize_run
from dumper.index_summary import SUMMARY_FILE, load_summary
from dumper.reader import open_run
from tests.helpers.procs import dump_run

# Two writers in one process (dumping turned off, then on: the second appends to the
# index), shapes that change with the step, tags, and an integer tensor.
DUMPS = """
import torch
from dumper import dumper
for step in range(4):
    for layer in range(2):
        with dumper.tags(layer=layer):
            dumper.dump("hidden", torch.ones(2 + step % 2, 4) * step, dims="t h")
    dumper.dump("ids", torch.arange(3 + step))
    dumper.step()
    if step == 1:
        dumper.close()
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("summary") / "run"
    dump_run(run_dir, DUMPS)
    return run_dir


@pytest.fixture
def run_dir(written, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(written, copy)
    return copy


def reference_tensors(run_dir) -> list[dict]:
    """``ls``'s tensor rows computed the way it did before summaries: one pass over every record."""
    grouped: dict = {}
    with open_run(run_dir) as run:
        for record in run.records:
            entry = grouped.setdefault((record.name, repr(sorted(record.tags.items()))), {
                "name": record.name, "tags": record.tags, "dtype": record.dtype, "shapes": [], "dims": record.dims,
                "steps": set(), "ranks": set(), "records": 0, "bytes": 0})
            if list(record.shape) not in entry["shapes"]:
                entry["shapes"].append(list(record.shape))
            entry["steps"].add(record.step)
            entry["ranks"].add(record.rank)
            entry["records"] += 1
            entry["bytes"] += record.nbytes
    return [{**e, "steps": sorted(e["steps"]), "ranks": sorted(e["ranks"])} for e in grouped.values()]


def ls_json(run_dir) -> dict:
    with open_run(run_dir, index="summary") as run:
        return summarize_run(run).to_json()


def test_a_closed_rank_has_a_summary_that_ls_uses_instead_of_the_lines(run_dir, caplog):
    summary_path = run_dir / "rank-00000" / SUMMARY_FILE
    assert summary_path.exists()
    with caplog.at_level(logging.WARNING), open_run(run_dir, index="summary") as run:
        (rank,) = run.ranks
        assert rank.summary is not None and rank.records == []  # nothing decoded line by line
        assert rank.summary.records == 12 and rank.steps == [0, 1, 2, 3] and rank.last_step == 3
        assert run.mode == "tensor" and run.world_size == 1 and run.complete
    assert not caplog.records
    data = ls_json(run_dir)
    assert data["tensors"] == reference_tensors(run_dir)
    assert [(t["name"], t["tags"], t["shapes"], t["records"]) for t in data["tensors"]] == [
        ("hidden", {"layer": 0}, [[2, 4], [3, 4]], 4), ("hidden", {"layer": 1}, [[2, 4], [3, 4]], 4),
        ("ids", {}, [[3], [4], [5], [6]], 4)]


def test_a_run_written_before_summaries_lists_the_same(run_dir, caplog):
    expected = ls_json(run_dir)
    (run_dir / "rank-00000" / SUMMARY_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        assert ls_json(run_dir) == expected
    assert not caplog.records  # no summary is not a problem: old runs, ranks that never closed


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "not json", "edit a count"])
def test_a_corrupt_summary_is_ignored_with_a_warning(run_dir, caplog, damage):
    expected = ls_json(run_dir)
    path = run_dir / "rank-00000" / SUMMARY_FILE
    text = path.read_text()
    if damage == "flip a byte":
        text = text.replace('"hidden"', '"hiddeN"', 1)
    elif damage == "truncate":
        text = text[: len(text) // 2]
    elif damage == "not json":
        text = "\x00" * 10
    else:
        data = json.loads(text)
        data["tensors"][0]["records"] += 1
        text = json.dumps(data)
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="dumper.index_summary"):
        with open_run(run_dir, index="summary") as run:
            assert run.ranks[0].summary is None and len(run.ranks[0].records) == 12
        assert ls_json(run_dir) == expected
    assert any(SUMMARY_FILE in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


def test_a_stale_summary_is_ignored_and_the_new_lines_are_listed(run_dir, caplog):
    index = run_dir / "rank-00000" / "index.jsonl"
    lines = index.read_text().splitlines()
    extra = json.loads(lines[-1])
    extra.update(seq=extra["seq"] + 1, step=4, name="late")
    index.write_text("\n".join(lines + [json.dumps(extra)]) + "\n")
    with caplog.at_level(logging.WARNING, logger="dumper.index_summary"):
        data = ls_json(run_dir)
    assert any("stale" in r.getMessage() for r in caplog.records)
    assert data["tensors"] == reference_tensors(run_dir) and data["tensors"][-1]["name"] == "late"
    assert data["ranks"][0]["steps"] == [0, 1, 2, 3, 4] and data["ranks"][0]["records"] == 13


def test_an_index_edited_in_place_makes_the_summary_stale(run_dir):
    index = run_dir / "rank-00000" / "index.jsonl"
    text = index.read_text()
    index.write_text(text.replace('"name":"ids"', '"name":"idz"', 1))  # same size, other bytes
    assert load_summary(str(run_dir / "rank-00000"), source="rank-00000") is None


def test_an_unclean_index_gets_no_summary(tmp_path):
    from dumper.index_summary_write import write_summary

    run_dir = tmp_path / "run"
    dump_run(run_dir, DUMPS)
    rank_dir = run_dir / "rank-00000"
    index = rank_dir / "index.jsonl"
    index.write_text(index.read_text() + '{"seq": 12, "st')  # a torn last line
    assert write_summary(str(rank_dir)) is False and not (rank_dir / SUMMARY_FILE).exists()
