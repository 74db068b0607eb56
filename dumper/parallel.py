"""Where a process sits in the parallel layout: global rank and every known axis.

Three sources, later ones winning per axis: torch.distributed (global rank and world
size), providers registered by engine plugins (``register_provider``), and explicit
``set_parallel(tp=(rank, size), ...)`` calls. Nothing here assumes CUDA.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

from dumper.format import AxisInfo

log = logging.getLogger(__name__)

_WARNED_SIZES: set[tuple[int, int]] = set()

Provider = Callable[[], "dict[str, tuple[int, int]] | None"]


@dataclass(frozen=True, kw_only=True)
class ParallelInfo:
    rank: int
    world_size: int
    axes: dict[str, AxisInfo] = field(default_factory=dict)
    # False when no distributed rank is known (no torch.distributed, no RANK variable).
    rank_known: bool = True


def _dist_rank_and_size() -> tuple[int, int] | None:
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _env_rank_and_size() -> tuple[int, int] | None:
    # Launchers (torchrun, mpirun, slurm) announce ranks before the group exists.
    for rank_var, size_var in (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if rank_var in os.environ:
            try:
                rank, size = int(os.environ[rank_var]), int(os.environ.get(size_var, "1"))
            except ValueError:
                return None
            if not 0 <= rank < 1 << 20:
                return None
            if not rank < size <= 1 << 20:
                # NOTE: the reader refuses a record whose rank is outside its world size, so
                # RANK=3 WORLD_SIZE=2 would write records no one can read; widen the world
                # (ls then reports the ranks that are absent) and say so.
                if (rank, size) not in _WARNED_SIZES:
                    _WARNED_SIZES.add((rank, size))
                    log.warning("dumpcmp: %s=%s is outside %s=%s; recording world size %d",
                                rank_var, rank, size_var, os.environ.get(size_var, "1"), rank + 1)
                size = rank + 1
            return rank, size
    return None


class ParallelState:
    """Caches the answer; ``invalidate()`` is called on every step and explicit change."""

    def __init__(self) -> None:
        self._explicit: dict[str, AxisInfo] = {}
        self._providers: list[Provider] = []
        self._cached: ParallelInfo | None = None
        self._cached_with_dist = False

    def set_axes(self, **axes: tuple[int, int] | None) -> None:
        for axis, value in axes.items():
            if value is None:
                self._explicit.pop(axis, None)
                continue
            rank, size = value
            if not (0 <= int(rank) < int(size)):
                raise ValueError(f"{axis}=({rank}, {size}): rank must be in [0, size)")
            self._explicit[axis] = AxisInfo(rank=int(rank), size=int(size))
        self.invalidate()

    def register_provider(self, provider: Provider) -> None:
        self._providers.append(provider)
        self.invalidate()

    def invalidate(self) -> None:
        self._cached = None

    def current(self) -> ParallelInfo:
        dist_now = _dist_rank_and_size()
        if self._cached is not None and self._cached_with_dist == (dist_now is not None):
            return self._cached
        known = dist_now or _env_rank_and_size()
        rank, world_size = known if known is not None else (0, 1)
        axes: dict[str, AxisInfo] = {}
        for provider in self._providers:
            try:
                found = provider() or {}
            except Exception as exc:  # noqa: BLE001 - a plugin must never break the engine
                log.warning("dumpcmp: parallel-info provider %r failed: %s", provider, exc)
                continue
            for axis, value in found.items():
                try:
                    axis_rank, axis_size = (int(v) for v in value)
                    valid = isinstance(axis, str) and 0 <= axis_rank < axis_size <= 1 << 20
                except (TypeError, ValueError, OverflowError):
                    valid = False
                if not valid:  # the reader would refuse every record carrying it
                    log.warning("dumpcmp: parallel-info provider %r gave %r=%r, not (rank, size) with "
                                "0 <= rank < size; axis ignored", provider, axis, value)
                    continue
                axes[axis] = AxisInfo(rank=axis_rank, size=axis_size)
        axes.update(self._explicit)
        self._cached = ParallelInfo(rank=rank, world_size=world_size, axes=axes, rank_known=known is not None)
        self._cached_with_dist = dist_now is not None
        return self._cached
