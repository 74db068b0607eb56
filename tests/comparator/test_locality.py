"""Which node directory a work item runs next to (comparator/locality.py): metadata only, no Ray."""

from __future__ import annotations

import os

from comparator.locality import (advertised_directories, bytes_by_directory, choose_directory, directory_resource,
                                 reads_data)
from comparator.options import CompareOptions
from comparator.plan import TensorWork, plan_comparison
from comparator.results import Pair
from dumper.reader import open_run
from tests.helpers.node_split import split_into_nodes


def test_the_directory_holding_most_bytes_wins_among_those_advertised():
    held = {"/a": 10, "/b": 30, "/c": 50}
    assert choose_directory(held, frozenset({"/a", "/b", "/c"}), "x") == "/c"
    assert choose_directory(held, frozenset({"/a", "/b"}), "x") == "/b"  # /c is on a shared file system
    assert choose_directory(held, frozenset(), "x") is None  # nobody advertises: any node
    assert choose_directory({}, frozenset({"/a"}), "x") is None


def test_ties_are_spread_by_label_and_stable():
    held = {"/node0": 8, "/node1": 8, "/base": 4}
    advertised = frozenset(held)
    chosen = [choose_directory(held, advertised, f"layer.{i}") for i in range(40)]
    assert set(chosen) == {"/node0", "/node1"}
    assert chosen == [choose_directory(held, advertised, f"layer.{i}") for i in range(40)]


def test_resources_name_absolute_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert directory_resource("dumps/node3") == f"dumpcmp_dir:{tmp_path}/dumps/node3"
    assert advertised_directories(["CPU", "node:10.0.0.1", "dumpcmp_dir:/local/x", "memory"]) == {"/local/x"}


def test_bytes_are_counted_per_node_directory_of_both_sides(tmp_path, runs):
    node0, node1 = split_into_nodes(runs["tp2"], tmp_path, "tp2", ((0,), (1,)))
    with open_run(runs["tp1"]) as baseline, open_run(str(tmp_path / "tp2-node*")) as target:
        plan = plan_comparison(Pair(baseline, target), CompareOptions())
        roots = Pair(baseline.root, target.root)
        work = [item for item in plan.items if reads_data(item)]
        assert work and all(isinstance(item, TensorWork) for item in work)
        for item in work:
            held = bytes_by_directory(item, roots)
            records = [(side, r) for side, plans in item.plans.items() for p in plans for r in p.records]
            assert set(held) <= {os.path.abspath(runs["tp1"]), str(node0), str(node1)}
            assert sum(held.values()) == sum(r.nbytes for _, r in records)
            assert held.get(str(node1), 0) == sum(r.nbytes for side, r in records if side == "target" and r.rank == 1)
