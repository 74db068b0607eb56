"""The Dumper's CUDA-graph side: the real token count, the graph buffers and the CUDAGraph hooks.

Functions of the owning :class:`dumper.api.Dumper` (split from dumper/api.py to keep it small).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from dumper.api import Dumper

log = logging.getLogger("dumper.api")


def set_real_tokens(owner: "Dumper", count: int | None) -> None:
    """Rows of the batch that runs next (engine presets call it before a graph replay).

    At capture it is the graph's (padded) batch size; before a replay, the real
    count: records of the replay keep that many rows (docs/graphs.md).
    """
    owner._real_tokens = None if count is None else int(count)
    if owner._graphs is not None:
        owner._graphs.set_real_tokens(owner._real_tokens)



def graph_dumps(owner: "Dumper"):
    """This dumper's CUDA-graph buffers, with CUDAGraph hooked while it dumps."""
    from dumper import graph_hooks

    if owner._graphs is None:
        from dumper.cudagraph import GraphDumps

        owner._graphs = GraphDumps(budget_bytes=owner._config.graph_bytes, warn=owner._warn_once)
        owner._graphs.set_real_tokens(owner._real_tokens)
    if not owner._graph_hooked:
        graph_hooks.install(owner)
        owner._graph_hooked = True
    return owner._graphs



def graph_coverage(owner: "Dumper") -> dict[str, Any] | None:
    return None if owner._graphs is None else owner._graphs.coverage()



def graph_event(owner: "Dumper", event: str, graph: Any) -> None:
    """From dumper/graph_hooks.py: a CUDAGraph was captured, replayed or reset. Never raises."""
    try:
        from dumper.graph_replay import on_graph_event

        on_graph_event(owner, event, graph)
    except Exception as exc:  # noqa: BLE001 - never break the engine
        owner._fail(exc)
