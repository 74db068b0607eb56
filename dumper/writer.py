"""The per-process background writer: snapshots in, safetensors files and index lines out.

The engine thread only enqueues snapshots. This thread waits for any device copy,
computes stats and the checksum, writes a batch of tensors as one safetensors file
(temp name, then rename), and only then appends their index lines: every line in an
index points at data that is already complete on disk.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal

from dumper.format import (
    INDEX_FILE,
    RANK_INFO_FILE,
    IndexRecord,
    RankInfo,
    RecordHead,
    TensorStats,
    data_file_name,
    rewrite_json_in_place,
    write_json_atomic,
)
from dumper.digest_workers import Done, Workers
from dumper.safetensors_io import write_safetensors
from dumper.snapshot import Snapshot
from dumper.steady_flush import SteadyFlush

log = logging.getLogger(__name__)

# Threads computing stats and checksums beside the writer (0 or 1: inline, on the
# writer thread). NOTE: off by default: on an H100 with a Python-bound engine, 4 workers
# doubled the writer's throughput but made a dumping step 2x slower than 0 workers,
# through GIL hand-offs with the engine thread (docs/performance.md). Benchmarks set it.
DIGEST_WORKERS: int = 0

# Write each batch's data file on a second thread while this one digests the next
# batch (stats, checksums). NOTE: that thread makes a few Python calls per file (the
# bytes go out in os.write without the GIL), so it adds few GIL hand-offs with the
# engine, unlike digest workers; benchmarks set it to compare (docs/performance.md).
OVERLAP_WRITES: bool = True

# rank.json is padded to this size so that its final update still fits when the
# disk has filled up (it is then rewritten in place, without new blocks).
_RANK_INFO_PAD = 8192


@dataclass(frozen=True)
class _Prepared:
    """A digested batch on its way to disk: the records that keep data, their file, their stats."""

    batch: list[PendingRecord]
    kept: list[PendingRecord]
    file_name: str | None
    digests: list[tuple[TensorStats, str | None]]  # per record: stats, and its checksum unless still to compute
    escalated: bool


@dataclass(frozen=True, kw_only=True)
class PendingRecord(RecordHead):
    """A record's head and the snapshot of its tensor, queued for the writer thread."""

    snapshot: Snapshot


class RankWriter:
    """Owns one rank directory. Thread-safe ``submit``; ``close`` flushes everything."""

    def __init__(
        self,
        *,
        rank_dir: str,
        rank_info: RankInfo,
        mode: str,
        queue_bytes: int,
        file_bytes: int,
        on_failure: Callable[[BaseException], None],
        flush_bytes: int = 1024 << 20,
        online: Any = None,
        graph_coverage: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.rank_dir = rank_dir
        # The CUDA-graph coverage line of rank.json (dumper/cudagraph.py), read at each update.
        self._graph_coverage = graph_coverage
        self._rank_info = rank_info
        self._mode = mode
        self._queue_limit = queue_bytes
        self._file_limit = file_bytes
        self._on_failure = on_failure
        # dumper.online.OnlineMonitor: data is written only for records it keeps.
        self._online = online
        self._queue: collections.deque[PendingRecord | None] = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._failed: BaseException | None = None
        self._closed = False
        self._records_written = _count_lines(os.path.join(rank_dir, INDEX_FILE))
        self._last_step: int | None = rank_info.last_step
        # A writer restarted after close() (dumping turned off and on) appends.
        self._next_file = sum(1 for n in os.listdir(rank_dir) if n.startswith("data-") and n.endswith(".safetensors"))
        self._in_flight = 0  # batches taken from the queue and not yet written
        # Steady write-back of the data files (DUMPCMP_FLUSH_MB; 0: off).
        self._flush = SteadyFlush(flush_bytes)
        self._files: Workers | None = Workers(1, name="dumpcmp-files") if OVERLAP_WRITES else None
        self._digest_workers: Workers | Literal[False] | None = None  # None: not decided yet; False: inline
        self._lost: dict[str, int] = dict(rank_info.lost)
        self._index = open(os.path.join(rank_dir, INDEX_FILE), "a", encoding="utf-8")
        write_json_atomic(os.path.join(rank_dir, RANK_INFO_FILE), rank_info.to_json(), pad_to=_RANK_INFO_PAD)
        self._thread = threading.Thread(target=self._run, name="dumpcmp-writer", daemon=True)
        self._thread.start()

    def note_lost(self, name: str, reason: str) -> None:
        """Count a record that could not be taken; the count lands in rank.json."""
        with self._cond:
            key = f"{name}: {reason}"
            self._lost[key] = self._lost.get(key, 0) + 1
            first = self._lost[key] == 1
        if first:
            self._write_rank_info(status="running")

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def submit(self, record: PendingRecord) -> bool:
        """Queue ``record``; False when this writer was closed meanwhile (the caller starts another)."""
        with self._cond:
            # A record larger than the whole budget still goes through, alone.
            while (
                self._queued_bytes > 0
                and self._queued_bytes + record.nbytes > self._queue_limit
                and self._failed is None
            ):
                self._cond.wait()
            if self._closed and self._failed is None:
                return False
            if self._failed is not None:
                return True  # dropped: the failure is reported once, in rank.json and a warning
            self._queue.append(record)
            self._queued_bytes += record.nbytes
            self._cond.notify_all()
            return True

    def submit_many(self, records: list[PendingRecord]) -> None:
        """``submit`` each, waking the writer once (a graph replay's records come together)."""
        with self._cond:
            for record in records:
                while (
                    self._queued_bytes > 0
                    and self._queued_bytes + record.nbytes > self._queue_limit
                    and self._failed is None
                ):
                    self._cond.notify_all()  # let the writer drain what is queued already
                    self._cond.wait()
                if self._failed is not None or self._closed:
                    return
                self._queue.append(record)
                self._queued_bytes += record.nbytes
            self._cond.notify_all()

    def flush(self) -> None:
        """Block until everything submitted so far is on disk (or dropped by a failure)."""
        with self._cond:
            while (self._queue or self._in_flight) and self._failed is None and self._thread.is_alive():
                self._cond.wait(0.1)

    def close(self, *, timeout: float | None = None) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._queue.append(None)
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._digest_workers:
            self._digest_workers.shutdown()
        status = "failed" if self._failed is not None else "closed"
        self._write_rank_info(status=status)
        try:
            self._index.close()
        except OSError:
            pass

    def _write_rank_info(self, *, status: str) -> None:
        info = RankInfo(
            **{
                **self._rank_info.to_json(),
                "status": status,
                "records": self._records_written,
                "last_step": self._last_step,
                "lost": dict(self._lost),
                **(self._online_json() if self._online is not None else {}),
                "graphs": self._graph_coverage() if self._graph_coverage is not None else None,
                "error": None if self._failed is None else f"{type(self._failed).__name__}: {self._failed}"[:1000],
            }
        )
        path = os.path.join(self.rank_dir, RANK_INFO_FILE)
        try:
            write_json_atomic(path, info.to_json(), pad_to=_RANK_INFO_PAD)
        except OSError:
            try:
                rewrite_json_in_place(path, info.to_json())
            except OSError as exc:
                log.debug("dumpcmp: could not update %s: %s", path, exc)

    def _online_json(self) -> dict[str, Any]:
        escalation = self._online.escalation
        return {"online": self._online.to_json(), "escalation": escalation.to_json() if escalation else None}

    def _take_batch(self) -> tuple[list[PendingRecord], bool]:
        with self._cond:
            while not self._queue:
                self._cond.wait()
            batch: list[PendingRecord] = []
            batch_bytes = 0
            while self._queue:
                item = self._queue[0]
                if item is None:
                    self._queue.popleft()
                    self._in_flight += 1
                    return batch, True
                if batch and batch_bytes + item.nbytes > self._file_limit:
                    break
                self._queue.popleft()
                batch.append(item)
                batch_bytes += item.nbytes
            self._in_flight += 1
            return batch, False

    def _release(self, batch: list[PendingRecord]) -> None:
        with self._cond:
            self._queued_bytes -= sum(item.nbytes for item in batch)
            self._in_flight -= 1
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            batch, done = self._take_batch()
            prepared = None
            if batch and self._failed is None:
                try:
                    prepared = self._prepare(batch)
                except BaseException as exc:  # noqa: BLE001 - the engine must never see it
                    self._fail(exc)
            if prepared is None:
                self._release(batch)
            elif self._files is not None:
                self._files.submit(self._store, prepared)
            else:
                self._store(prepared)
            if done:
                if self._files is not None:
                    self._files.submit(lambda _: None, None).result()  # everything before it is written
                    self._files.shutdown()
                self._flush.close()
                return

    def _store(self, prepared: _Prepared) -> None:
        """Write the batch's data file, then its index lines; on either thread."""
        try:
            if self._failed is None:
                self._write_prepared(prepared)
        except BaseException as exc:  # noqa: BLE001 - the engine must never see it
            self._fail(exc)
        finally:
            for item in prepared.batch:
                item.snapshot.release()
            self._release(prepared.batch)

    def _fail(self, exc: BaseException) -> None:
        # Disable dumping before anyone waiting in flush() wakes up and looks.
        self._on_failure(exc)
        self._failed = exc
        self._write_rank_info(status="failed")
        with self._cond:
            dropped = [item for item in self._queue if item is not None]
            self._queue = collections.deque(item for item in self._queue if item is None)
            self._queued_bytes -= sum(item.nbytes for item in dropped)
            self._cond.notify_all()


    def _digest_pool(self):
        """Worker threads for stats and checksums, or None to compute them inline.

        NOTE: zlib.crc32, torch's reductions and file writes release the GIL, so a few
        workers overlap checksums, stats and the data file write; on a small machine
        (fewer than 8 cores) they would only compete with the engine for the cores.
        """
        if self._digest_workers is None:
            workers = DIGEST_WORKERS
            self._digest_workers = Workers(workers) if workers >= 2 else False
        return self._digest_workers or None

    def _prepare(self, batch: list[PendingRecord]) -> _Prepared:
        """Stats (and checksums, unless the file stage computes them) of a batch, and which records keep data."""
        # Imported here so that importing dumper never pays for them.
        from dumper.stats import checksum, tensor_stats

        pool = self._digest_pool()
        # NOTE: with the file stage on its own thread, checksums are computed there (xxh3
        # releases the GIL): the two stages then take about the same time per MB.
        late_checksums = self._files is not None and pool is None

        def digest(snapshot: Snapshot):
            tensor = snapshot.wait()
            return tensor_stats(tensor), None if late_checksums else checksum(tensor)

        digests = [pool.submit(digest, item.snapshot) for item in batch] if pool is not None else None
        kept = batch if self._mode == "tensor" else []
        escalated = False
        if self._online is not None:
            kept, digests, escalated = self._online_filter(batch, digests, digest)
        file_name = data_file_name(self._next_file) if kept else None
        if file_name:
            self._next_file += 1
        done = [digests[position].result() if digests is not None else digest(item.snapshot)
                for position, item in enumerate(batch)]
        return _Prepared(batch=batch, kept=kept, file_name=file_name, digests=done, escalated=escalated)

    def _write_prepared(self, prepared: _Prepared) -> None:
        from dumper.stats import checksum

        checksums = [check if check is not None else checksum(item.snapshot.wait())
                     for item, (_, check) in zip(prepared.batch, prepared.digests)]
        if prepared.file_name:
            final_path = os.path.join(self.rank_dir, prepared.file_name)
            tmp_path = final_path + ".tmp"
            try:
                write_safetensors({f"{item.seq}": item.snapshot for item in prepared.kept}, tmp_path,
                                  flush=self._flush)
                os.replace(tmp_path, final_path)
            except BaseException:
                # Give the space back (a full disk is the usual cause) before failing.
                with contextlib.suppress(OSError):
                    os.unlink(tmp_path)
                raise
        kept_seqs = {item.seq for item in prepared.kept}
        lines = []
        for item, (stats, _), check in zip(prepared.batch, prepared.digests, checksums):
            tensor = item.snapshot.tensor
            kept = item.seq in kept_seqs
            lines.append(IndexRecord(
                **item.head_fields(),
                dtype=str(tensor.dtype).removeprefix("torch."),
                shape=tuple(tensor.shape),
                stats=stats,
                checksum=check,
                file=prepared.file_name if kept else None,
                key=f"{item.seq}" if kept else None,
            ).to_json_line())
        self._index.write("\n".join(lines) + "\n")
        self._index.flush()
        self._records_written += len(prepared.batch)
        self._last_step = prepared.batch[-1].step
        if self._online is not None and prepared.escalated:
            self._write_rank_info(status="running")

    def _online_filter(self, batch: list[PendingRecord], digests, digest):
        """The records whose data the online monitor keeps; their stats are computed first."""
        done = [Done(digests[position].result() if digests is not None else digest(item.snapshot))
                for position, item in enumerate(batch)]
        before = self._online.escalation
        kept = []
        for item, job in zip(batch, done):
            stats, _ = job.value
            tensor = item.snapshot.tensor
            if self._online.keep_data(seq=item.seq, step=item.step, name=item.name, tags=item.tags,
                                      shape=tuple(tensor.shape), dtype=str(tensor.dtype).removeprefix("torch."),
                                      stats=stats):
                kept.append(item)
        return kept, done, self._online.escalation is not before


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except FileNotFoundError:
        return 0
