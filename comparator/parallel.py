"""``jobs > 1``: execute work items in worker processes, results in order.

Each worker builds its executor with the same factory as the serial path
(comparator/execute.py ``make_executor``, through ``WorkerSetup``), from the same options, so ``--jobs 1`` and
``--jobs N`` give the same report.
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import Future
from typing import Iterator, Sequence

from comparator.execute import Executor, WorkerSetup
from comparator.options import CompareOptions
from comparator.plan import WorkItem
from comparator.results import Pair, TensorResult
from dumper.run import Run

_worker: Executor | None = None


def _init_worker(setup: WorkerSetup) -> None:
    global _worker
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent alone reports it

    torch.set_num_threads(1)
    _worker = setup.make_executor()


def _work(item: WorkItem) -> TensorResult:
    if _worker is None:
        raise RuntimeError("_work called outside a worker started by _init_worker")
    return _worker.run(item)


def run_parallel(items: Sequence[WorkItem], runs: Pair[Run], options: CompareOptions,
                 axis_sizes: dict[str, int]) -> Iterator[TensorResult]:
    """Results in order, from ``options.jobs`` worker processes, a bounded window in flight."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    window = 2 * options.jobs
    context = multiprocessing.get_context("spawn")
    initargs = (WorkerSetup.of(runs, options, axis_sizes),)
    with ProcessPoolExecutor(max_workers=options.jobs, mp_context=context, initializer=_init_worker,
                             initargs=initargs) as pool:
        pending: deque[Future[TensorResult]] = deque()
        queue = iter(items)

        def submit(item: WorkItem) -> Future[TensorResult]:
            # NOTE: workers are started inside submit(); one started with SIGINT ignored
            # keeps it ignored from its first instruction (Python installs its Ctrl-C
            # handler only over the default), so Ctrl-C during its start-up cannot print a
            # traceback. The parent alone reports it: one line, "interrupted".
            if threading.current_thread() is not threading.main_thread():
                return pool.submit(_work, item)
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                return pool.submit(_work, item)
            finally:
                signal.signal(signal.SIGINT, previous)

        for item in queue:
            pending.append(submit(item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            next_item = next(queue, None)
            if next_item is not None:
                pending.append(submit(next_item))
            yield result
