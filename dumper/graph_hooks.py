"""The replay hook: ``torch.cuda.CUDAGraph`` wrapped while dumping is on.

Engines capture and replay through ``torch.cuda.CUDAGraph`` (``torch.cuda.graph``,
vLLM's and SGLang's graph runners, inductor's cudagraph trees), so wrapping four of
its methods is enough for every one of them:

* ``capture_begin``: dumps from now on record into static buffers of this graph;
* ``capture_end``: those buffers belong to the graph;
* ``replay``: after the replay is enqueued, each owner emits the graph's buffers;
* ``reset``: the graph's buffers are released.

The wrappers are installed by the first dump of a process that dumps (``install``)
and removed when the last dumper using them closes (``uninstall``): a process that
does not dump runs torch's methods untouched. A failure inside a wrapper is the
dumper's (it disables dumping); the engine's call always goes through.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol


class GraphOwner(Protocol):
    """What a dumper provides to the hook (dumper.api.Dumper)."""

    def _graph_event(self, event: str, graph: Any) -> None: ...


_HOOKED = ("capture_begin", "capture_end", "replay", "reset")
_owners: list[GraphOwner] = []
# method name -> (what the class itself defined, or None when it was inherited)
_saved: dict[str, Callable[..., Any] | None] = {}
_lock = threading.Lock()


def _graph_class() -> Any:
    import torch

    return torch.cuda.CUDAGraph


def installed() -> bool:
    return bool(_saved)


def owners() -> tuple[GraphOwner, ...]:
    return tuple(_owners)


def install(owner: GraphOwner) -> None:
    """Route ``owner``'s graph events through the hook, wrapping CUDAGraph the first time."""
    with _lock:
        if owner not in _owners:
            _owners.append(owner)
        if _saved:
            return
        cls = _graph_class()
        for name in _HOOKED:
            own = cls.__dict__.get(name)
            _saved[name] = own
            setattr(cls, name, _wrapped(name, getattr(cls, name)))


def uninstall(owner: GraphOwner) -> None:
    """Stop routing to ``owner``; the last owner out restores torch's methods."""
    with _lock:
        if owner in _owners:
            _owners.remove(owner)
        if _owners or not _saved:
            return
        cls = _graph_class()
        for name, own in _saved.items():
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
        _saved.clear()


def _wrapped(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    # NOTE: begin and reset are told before torch acts, end and replay after: a dump
    # inside the capture must find the capture open, and a replay's buffers are
    # emitted only once the replay is enqueued on the stream.
    before = name in ("capture_begin", "reset")

    def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        if before:
            _tell(name, self)
        result = original(self, *args, **kwargs)
        if not before:
            _tell(name, self)
        return result

    hook.__name__ = getattr(original, "__name__", name)
    hook.__qualname__ = getattr(original, "__qualname__", name)
    hook.__doc__ = getattr(original, "__doc__", None)
    hook.__dumpcmp_hook__ = True  # type: ignore[attr-defined]
    return hook


def _tell(event: str, graph: Any) -> None:
    for owner in tuple(_owners):
        owner._graph_event(event, graph)
