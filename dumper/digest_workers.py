"""A few daemon threads beside the writer thread: stats and checksums (digest workers), data file writes."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class Job:
    def __init__(self, function: Callable[[Any], Any], argument: Any) -> None:
        self.function = function
        self.argument = argument
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def result(self) -> Any:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Done:
    """A result already computed, with a job's ``result()``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class Workers:
    """A few daemon threads running jobs in submission order.

    NOTE: not concurrent.futures: its executors refuse new work once the main thread
    has ended, and the writer still drains its queue at exit (atexit runs later).
    """

    def __init__(self, count: int, *, name: str = "dumpcmp-digest") -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._count = count
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{number}", daemon=True)
                         for number in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable[[Any], Any], argument: Any) -> Job:
        job = Job(function, argument)
        self._jobs.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.value = job.function(job.argument)
            except BaseException as exc:  # noqa: BLE001 - handed to the writer thread
                job.error = exc
            job.done.set()

    def shutdown(self) -> None:
        for _ in range(self._count):
            self._jobs.put(None)
        # Joined so that none is still inside torch when the interpreter finalizes.
        for thread in self._threads:
            thread.join(5.0)
