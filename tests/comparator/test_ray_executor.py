"""``--executor ray`` gives the local executor's report, on a two-node Ray cluster of this machine.

The session's cluster (tests/helpers/ray_cluster.py): a head and a worker, 1 CPU each,
each advertising the directories of its own "node" (``dumpcmp_dir:PATH``, docs/scale.md).
The targets are example-engine runs laid out as two nodes write them, one directory per
node (tests/helpers/node_split.py); the baseline's directory is advertised by no node (a
shared file system: any node reads it). Every scenario is compared locally and on the
cluster, and the JSON reports must be equal, whole.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from comparator import compare
from comparator.errors import ClusterError
from comparator.locality import directory_resource
from comparator.options import CompareOptions
from comparator.plan import plan_comparison
from comparator.report.json import report_to_json
from comparator.results import Pair
from dumper.reader import open_run
from tests.conftest import require_engine
from tests.helpers.example_runs import DUMPCMP, example_runs, example_runs_root
from tests.helpers.node_split import split_into_nodes
from tests.helpers.procs import clean_env
from tests.helpers.ray_cluster import LocalCluster, cluster_auth, local_cluster

pytestmark = [pytest.mark.engine, pytest.mark.slow]

# name -> target glob (under the nodes' root); the baseline is the demo's 1-rank run.
SCENARIOS = {
    "healthy": "ep2-node*",
    "seeded_divergence": "demo-node*",  # seed 1: the EP reduction skipped under fusion
    "missing_node": "demo-node0*",  # node 1's directory not there: ranks 2, 3 absent
    "stats_mode": "stats-node*",
    "unreadable_shard": "broken-node*",  # a truncated data file on node 1
}


@pytest.fixture(scope="session")
def nodes_root(tmp_path_factory) -> Path:
    root = example_runs_root(tmp_path_factory)
    runs = example_runs(root, ["ep2", "ep2_stats"])
    nodes = tmp_path_factory.mktemp("ray_nodes")
    split_into_nodes(runs["ep2"], nodes, "ep2", ((0,), (1,)))
    split_into_nodes(runs["ep2_stats"], nodes, "stats", ((0,), (1,)))
    split_into_nodes(root / "demo" / "target", nodes, "demo", ((0, 1), (2, 3)))
    _, broken = split_into_nodes(runs["ep2"], nodes, "broken", ((0,), (1,)))
    data = sorted((broken / "rank-00001").glob("data-*.safetensors"))[3]
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return nodes


@pytest.fixture(scope="session")
def ray_installed() -> Iterator[None]:
    """Ray, joined with the test cluster's token; without Ray: skip, or fail under DUMPCMP_REQUIRE_ENGINES=1."""
    with pytest.MonkeyPatch.context() as patch:
        # NOTE: before Ray is first imported here: it reads its authentication settings then.
        for key, value in cluster_auth().items():
            patch.setenv(key, value)  # the driver (this process) joins with the cluster's token
        require_engine("ray", "pip install 'dumpcmp[ray]' (see .ci/engines.sh)")
        yield


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, ray_installed, nodes_root) -> Iterator[LocalCluster]:
    node_directories = [sorted(nodes_root.glob(f"*-node{index}")) for index in (0, 1)]
    resources = [{directory_resource(str(d)): 1.0 for d in directories} for directories in node_directories]
    with local_cluster(tmp_path_factory.mktemp("ray_cluster"), resources) as started:
        yield started


@pytest.fixture(scope="module")
def driver(cluster) -> Iterator[None]:
    """This process joined to the cluster once: compare() keeps a caller's connection, and the nodes'
    worker processes (each importing torch) then last from one comparison to the next. The CLI test
    covers connecting and disconnecting."""
    import ray

    ray.init(address=cluster.address)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Path:
    return example_runs_root(tmp_path_factory) / "demo" / "baseline"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_ray_gives_the_local_report(cluster, driver, nodes_root, baseline, scenario):
    target = str(nodes_root / SCENARIOS[scenario])
    local = compare(baseline, target)
    on_cluster = compare(baseline, target, executor="ray", address=cluster.address)
    assert local.summary.total > 0
    assert report_to_json(on_cluster) == report_to_json(local)
    # ...and the scenario is what it says.
    if scenario == "healthy":
        assert local.exit_code == 0
    elif scenario == "seeded_divergence":
        assert local.exit_code == 1 and local.first_divergence.hint
    elif scenario == "missing_node":
        assert "rank(s) 2, 3 of 4 are absent" in local.problems["target"] and local.exit_code != 0
    elif scenario == "stats_mode":
        assert all(r.stats_only for r in local.results)
    else:
        unreadable = [r for r in local.results if r.status == "error" and r.load_error]
        assert unreadable and all("broken-node1" in r.reason for r in unreadable)


@pytest.mark.parametrize("batch_items", [1, 5])
def test_any_batch_size_gives_the_local_report(cluster, driver, nodes_root, baseline, monkeypatch, batch_items):
    """Tasks of one item, or of a few (batches filling at different paces per directory), in the plan's order."""
    monkeypatch.setattr("comparator.ray_executor.BATCH_ITEMS", batch_items)
    target = str(nodes_root / SCENARIOS["seeded_divergence"])
    on_cluster = compare(baseline, target, executor="ray", address=cluster.address)
    assert report_to_json(on_cluster) == report_to_json(compare(baseline, target))


def test_tasks_run_on_the_node_holding_their_shards(cluster, driver, nodes_root, baseline):
    import ray

    from comparator.ray_executor import RayExecutor

    options = CompareOptions(executor="ray", address=cluster.address)
    with open_run(baseline) as baseline_run, open_run(str(nodes_root / "demo-node*")) as target_run:
        runs = Pair(baseline_run, target_run)
        plan = plan_comparison(runs, options)
        executor = RayExecutor(runs, CompareOptions(executor="ray", address=cluster.address, aligner=plan.aligner),
                               plan.axis_sizes)
        results = list(executor.results(plan.items))
        assert ray.is_initialized()  # the executor leaves a caller's connection alone
        holders = {node["NodeID"]: {name for name in node["Resources"] if name.startswith("dumpcmp_dir:")}
                   for node in ray.nodes() if node["Alive"]}
    assert len(results) == len(plan.items) == len(executor.placements) > 50
    for placement in executor.placements:
        assert placement.directory is not None and Path(placement.directory).parent == nodes_root
        assert directory_resource(placement.directory) in holders[placement.node]
    # Replicated tensors tie on both nodes: they are spread, so each node does its share.
    assert {p.node for p in executor.placements} == set(holders)


def test_the_cli_compares_on_the_cluster(cluster, nodes_root, baseline):
    """The command line connects to --address, compares, and leaves the cluster as it was."""
    target = str(nodes_root / "ep2-node*")
    env = clean_env(**cluster.env)
    command = [*DUMPCMP, "compare", str(baseline), target, "--format", "json"]
    processes = [subprocess.Popen(arguments, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for arguments in (command, [*command, "--executor", "ray", "--address", cluster.address])]
    (local, _), (on_cluster, errors) = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors[-3000:]
    assert json.loads(on_cluster) == json.loads(local)


def test_a_node_of_another_dumpcmp_version_is_one_line(cluster, driver, nodes_root, baseline, monkeypatch):
    """The comparing machine's version travels with the setup; a node of another version refuses it."""
    monkeypatch.setattr("comparator.ray_executor.TOOL_VERSION", "0.0.1-other")
    with pytest.raises(ClusterError, match=r"^node \w+ runs dumpcmp \S+, the comparing machine 0\.0\.1-other: "
                                           r"install one version on every node$"):
        compare(baseline, str(nodes_root / "ep2-node*"), executor="ray", address=cluster.address)
