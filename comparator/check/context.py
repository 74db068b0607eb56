"""What every check reads: the run's logical tensors in execution order, each with its plan.

Planned once (metadata only, comparator/unshard.py); the checks that need tensor data
load it through the comparator's own loader, one record at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from comparator.errors import UnshardError
from comparator.judge.thresholds import Thresholds
from dumper.loader import TensorLoader
from comparator.matching import LogicalTensor
from comparator.unshard import UnshardPlan
from dumper.format import IndexRecord
from dumper.run import Run

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class PlannedTensor:
    tensor: LogicalTensor
    plan: UnshardPlan | UnshardError  # the error when its shards cannot be put together

    @property
    def label(self) -> str:
        return self.tensor.label


@dataclass(kw_only=True)
class CheckContext:
    run: Run
    tensors: list[PlannedTensor]  # in execution order
    loader: TensorLoader
    thresholds: Thresholds

    @property
    def stats_only(self) -> bool:
        """No tensor data: the checks judge from index stats and checksums."""
        return all(record.file is None for planned in self.tensors for record in planned.tensor.records)

    def load(self, record: IndexRecord) -> "torch.Tensor":
        return self.loader.load(record)

    def rank_dir(self, rank: int) -> str | None:
        for contents in self.run.ranks:
            if contents.rank == rank:
                return os.path.join(self.run.root, contents.directory)
        return None

    def position_after(self, rank: int, seq: int) -> int | None:
        """Execution order of the first tensor rank ``rank`` dumped after its record ``seq``."""
        best: tuple[int, int] | None = None
        for planned in self.tensors:
            for record in planned.tensor.records:
                if record.rank == rank and record.seq > seq and (best is None or record.seq < best[0]):
                    best = (record.seq, planned.tensor.position)
        return best[1] if best is not None else None
