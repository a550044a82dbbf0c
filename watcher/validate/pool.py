"""The validation workers: processes the daemon can lose without losing its footing.

A worker killed from outside (the OOM killer, an operator) breaks a ``ProcessPoolExecutor``
for good. The pool is replaced at once, the file it was checking is checked once more, and a
file that kills the checker twice is rejected as "could not be checked".
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import structlog

from watcher.validate.report import Report, ValidationOptions
from watcher.validate.workbook import validate_file

__all__ = ("ValidationPool",)

log = structlog.get_logger(__name__)

_ATTEMPTS = 2


def _leave_signals_to_the_daemon() -> None:
    """In a validation worker: Ctrl-C reaches the whole process group; the daemon decides."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ValidationPool:
    """Checks files in worker processes, replacing the workers when they die.

    Args:
        workers: how many files are checked at once.
    """

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool = self._new()
        self.replaced = 0  # how often the workers died and were replaced

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_leave_signals_to_the_daemon,
        )

    @property
    def pids(self) -> list[int]:
        """The worker processes running now."""
        return [p.pid for p in (self._pool._processes or {}).values() if p.pid is not None]

    async def validate(self, path: str, options: ValidationOptions) -> Report:
        """Check one file; never raises for a dead worker."""
        loop = asyncio.get_running_loop()
        for attempt in range(1, _ATTEMPTS + 1):
            pool = self._pool
            try:
                return await loop.run_in_executor(pool, validate_file, path, options)
            except BrokenProcessPool:
                log.error("validation.worker_died", attempt=attempt)
                self._replace(pool)
        report = Report(examples_per_kind=options.examples_per_kind)
        report.add(
            "check_failed",
            None,
            None,
            "",
            f"the checker process died {_ATTEMPTS} times while reading this file "
            "(killed, or out of memory)",
        )
        return report

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if self._pool is broken:  # not already replaced by another file's failure
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new()
            self.replaced += 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
