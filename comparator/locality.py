"""Where a work item's shards are: the node directory to run it next to (``--executor ray``).

A node of the cluster says which run directories its disk holds by a Ray custom
resource per directory, named after the directory's absolute path
(``ray start --resources '{"dumpcmp_dir:/local/dumps/tp8-node3": 1}'``). A work item
goes to a node that advertises the directory holding most of its bytes (both sides
counted; ties spread over the tied directories); when no node advertises any of its directories (a shared file system, or
nodes started without the resource), to any node. Metadata only: nothing here reads a
tensor, and nothing here imports Ray.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable

from comparator.plan import TensorWork, WorkItem
from comparator.results import Pair

RESOURCE_PREFIX = "dumpcmp_dir:"
# NOTE: each task asks for this much of its directory's resource: any positive amount a
# node advertises admits a thousand tasks at once, so the CPUs alone bound concurrency.
RESOURCE_PER_TASK = 0.001


def directory_resource(directory: str) -> str:
    """The custom resource a node advertises for a directory its disk holds."""
    return RESOURCE_PREFIX + os.path.abspath(directory)


def advertised_directories(resources: Iterable[str]) -> frozenset[str]:
    """The directories a cluster's resource names advertise."""
    return frozenset(name[len(RESOURCE_PREFIX):] for name in resources if name.startswith(RESOURCE_PREFIX))


def reads_data(item: WorkItem) -> bool:
    """Whether executing the item loads tensor data (else it is judged from the plan and index alone)."""
    return isinstance(item, TensorWork)


def bytes_by_directory(item: WorkItem, roots: Pair[str]) -> dict[str, int]:
    """How many bytes of the item's shards each node directory holds (absolute paths), both sides together.

    A record's ``source`` is its rank directory relative to its run's root: the node
    directory is the part above the rank directory (the root itself for a run of one
    directory).
    """
    if not isinstance(item, TensorWork):
        return {}
    held: dict[str, int] = {}
    for side, plans in item.plans.items():
        root = os.path.abspath(getattr(roots, side))
        for plan in plans:
            for record in plan.records:
                if record.file is None:
                    continue
                directory = os.path.normpath(os.path.join(root, os.path.dirname(record.source)))
                held[directory] = held.get(directory, 0) + record.nbytes
    return held


def choose_directory(held: dict[str, int], advertised: frozenset[str], spread_by: str) -> str | None:
    """The advertised directory holding most of the item's bytes; None: run on any node.

    NOTE: replicated tensors tie on every node holding a replica; the ties are spread
    by ``spread_by`` (the tensor's label), else all of them would queue on one node.
    """
    candidates = {directory: size for directory, size in held.items() if directory in advertised}
    if not candidates:
        return None
    most = max(candidates.values())
    tied = sorted(directory for directory, size in candidates.items() if size == most)
    return tied[zlib.crc32(spread_by.encode()) % len(tied)]
