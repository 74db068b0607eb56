"""An opened run: its ranks, their index records, and the tensors behind them.

``dumper.reader.open_run`` (dumpcmp runs) and ``dumper.sglang_reader`` (SGLang
dumps) build it; tensors are loaded on demand through dumper/loader.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Literal

from dumper.format import IndexRecord, RankInfo, RunInfo
from dumper.index_summary import IndexSummary, summarize_records
from dumper.loader import TensorLoader

if TYPE_CHECKING:
    import torch


_SEQ, _SOURCE, _RANK, _STEP = attrgetter("seq"), attrgetter("source"), attrgetter("rank"), attrgetter("step")


@dataclass(frozen=True, kw_only=True)
class RankContents:
    directory: str  # e.g. "rank-00001" or "proc-4242"
    rank: int
    info: RankInfo | None
    records: list[IndexRecord]
    torn_lines: int = 0
    # Set when the run was opened for its summaries only (``open_run(..., index="summary")``)
    # and the rank's index-summary.json matched its index: ``records`` is then empty.
    summary: IndexSummary | None = None

    def index_summary(self) -> IndexSummary:
        """What the rank's index holds (dumper/index_summary.py): from its summary file, or from its records."""
        return self.summary if self.summary is not None else summarize_records(self.records)

    @property
    def record_count(self) -> int:
        return self.summary.records if self.summary is not None else len(self.records)

    @property
    def steps(self) -> list[int]:
        if self.summary is not None:
            return list(self.summary.steps)
        return sorted({r.step for r in self.records})

    @property
    def last_step(self) -> int | None:
        if self.summary is not None:
            return self.summary.steps[-1] if self.summary.steps else None
        return max((r.step for r in self.records), default=None)

    @property
    def status(self) -> str:
        return self.info.status if self.info is not None else "unknown"


@dataclass(kw_only=True)
class Run:
    path: str
    info: RunInfo | None
    ranks: list[RankContents]
    problems: list[str] = field(default_factory=list)
    format: Literal["dumpcmp", "sglang"] = "dumpcmp"
    # Where rank directories (``RankContents.directory``, ``IndexRecord.source``) are
    # relative to: ``path`` itself, or for a run spread over several directories (one per
    # node, ``path`` then being the glob that names them) their common parent.
    root: str = ""
    directories: tuple[str, ...] = ()  # the node directories of a run spread over several
    _loader: TensorLoader | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.root:
            self.root = self.path

    @property
    def records(self) -> list[IndexRecord]:
        """Every record, ordered by step, then rank, then execution order on the rank."""
        everything = [record for rank in self.ranks for record in rank.records]
        # NOTE: four stable sorts, least significant key first, give the order of one sort by
        # (step, rank, source, seq) without a key tuple per record (70 MB for a million records).
        for key in (_SEQ, _SOURCE, _RANK, _STEP):
            everything.sort(key=key)
        return everything

    @property
    def world_size(self) -> int:
        sizes = [r.info.world_size for r in self.ranks if r.info is not None]
        sizes += [rec.world_size for r in self.ranks for rec in r.records[:1]]
        sizes += [r.summary.world_size for r in self.ranks if r.summary is not None and r.summary.world_size is not None]
        return max(sizes, default=len(self.ranks))

    @property
    def complete(self) -> bool:
        return not self.problems

    @property
    def mode(self) -> str:
        if self.info is not None:
            return self.info.mode
        if any(rank.summary is not None and rank.summary.has_data for rank in self.ranks):
            return "tensor"
        return "stats" if all(rec.file is None for rank in self.ranks for rec in rank.records) else "tensor"

    def load(self, record: IndexRecord, *, verify: bool = False) -> "torch.Tensor":
        """Load one record's tensor (a copy, safe to keep after ``close``)."""
        if self._loader is None:
            self._loader = TensorLoader(self)
        return self._loader.load(record, verify=verify)

    def close(self) -> None:
        self._loader = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
