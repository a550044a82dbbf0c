"""The validation workers: one process per file, under limits the daemon enforces from outside.

A hostile workbook may make its checker run for ever or eat all memory. Each file is checked in
a process of its own (forked from a forkserver that has already imported the reader), in a
process group of its own, with an address-space limit (``validation.max_memory_mb``) set before
any byte of the file is read, and a wall-clock limit (``validation.max_seconds``) that the daemon
keeps: past it the whole group is killed. A worker killed from outside (the OOM killer, an
operator) is noticed from its exit status; the file is checked once more and, if the checker
dies again, rejected as "could not be checked". Nothing a worker does can break the next file's
check, and a pool that cannot start a worker makes the daemon unready.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import resource
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkServerContext
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any, Literal

import structlog

from watcher.errors import CheckerUnavailableError
from watcher.validate.forks import die_with_parent
from watcher.validate.report import Report, ValidationOptions
from watcher.validate.workbook import validate_file

__all__ = ("CheckLimits", "ValidationPool")

log = structlog.get_logger(__name__)

_ATTEMPTS = 2  # a checker killed from outside gets one more try
_MB = 1 << 20
_PROGRESS_EVERY_S = 0.1  # how often the shared count is read for a progress display
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class CheckLimits:
    """What one file's check may spend."""

    max_seconds: float
    max_memory_mb: int


class _Tally:
    """In a checker and its fork: adds the sheet bytes each one reads to one shared count.

    The count lives in shared memory (``[read, total]``), which a fork inherits: both halves of
    a big sheet add to it, and the parent reads it. It only ever grows.
    """

    def __init__(self, count: SynchronizedArray[int]) -> None:
        self._count = count

    def __call__(self, read: int, total: int) -> None:
        with self._count.get_lock():
            self._count[0] += read
            self._count[1] = total


@contextlib.asynccontextmanager
async def _feeding(
    count: SynchronizedArray[int] | None, progress: Progress | None
) -> AsyncIterator[None]:
    """While a check runs, tell ``progress`` the shared count now and then, and once at the end."""
    if count is None or progress is None:
        yield
        return

    def tell() -> None:
        with count.get_lock():
            read, total = count[0], count[1]
        if total:
            progress(min(read, total), total)

    async def feed() -> None:
        while True:
            tell()
            await asyncio.sleep(_PROGRESS_EVERY_S)

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        tell()


def _work(
    path: str,
    options: ValidationOptions,
    memory_mb: int,
    seconds: float,
    answer: Connection,
    count: SynchronizedArray[int] | None = None,
) -> None:
    """In the worker: own process group, memory ceiling, check, send the report up the pipe."""
    os.setpgid(0, 0)  # Ctrl-C reaches the daemon's group, not this one; a kill reaches the fork
    # What the forkserver imported stays shared with it: collecting would copy its pages.
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    ceiling = memory_mb * _MB
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    # A last bound of its own, should the daemon that keeps the wall clock die (SIGKILL).
    cpu_s = int(seconds) + 10
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    try:
        progress = _Tally(count) if count is not None else None
        result: tuple[str, Any] = ("report", validate_file(path, options, progress))
    except MemoryError:
        result = ("memory", None)
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the daemon must hear of it
        result = ("crashed", f"{type(exc).__name__}: {exc}")
    try:
        answer.send(result)
    except MemoryError:
        answer.send(("memory", None))
    answer.close()


def _receive(answer: Connection) -> tuple[str, Any]:
    """The worker's answer, or ("died", None) when it ended without one."""
    try:
        result: tuple[str, Any] = answer.recv()
    except (EOFError, OSError):
        return ("died", None)
    return result


class ValidationPool:
    """Checks files in worker processes, at most ``workers`` at a time.

    Args:
        workers: how many files are checked at once.
        limits: the wall-clock and memory limit of one check.
    """

    def __init__(
        self,
        workers: int,
        limits: CheckLimits,
        *,
        start: Literal["fork", "forkserver"] = "forkserver",
    ) -> None:
        self._limits = limits
        self._slots = asyncio.Semaphore(workers)
        # The daemon forks from a clean forkserver (its own threads and sockets stay home); a
        # one-shot command may fork itself, a second sooner.
        self._context: ForkContext | ForkServerContext
        if start == "fork":
            self._context = multiprocessing.get_context("fork")
        else:
            self._context = multiprocessing.get_context("forkserver")
            self._context.set_forkserver_preload(["watcher.validate.workbook"])
        self._running: dict[int, multiprocessing.process.BaseProcess] = {}
        self.replaced = 0  # how often a worker died or was killed
        self.start_error: str | None = None  # why the last worker could not start, if it could not

    @property
    def pids(self) -> list[int]:
        """The worker processes running now."""
        return list(self._running)

    @property
    def healthy(self) -> bool:
        """The last attempt to start a worker worked (readiness)."""
        return self.start_error is None

    async def warm_up(self) -> None:
        """Start the forkserver and one worker now, so that a pool that cannot start shows."""
        with contextlib.suppress(CheckerUnavailableError):
            await self.validate(os.devnull, ValidationOptions())

    async def validate(
        self, path: str, options: ValidationOptions, progress: Progress | None = None
    ) -> Report:
        """Check one file; never raises for a dead, slow or greedy worker.

        Args:
            path: the file.
            options: the route's choices and limits.
            progress: told (sheet bytes read, total) now and then, in this process, by every
                process that checks the file together; a second attempt starts again at 0.

        Raises:
            CheckerUnavailableError: no worker could be started; the file was not judged.
        """
        async with self._slots:
            for attempt in range(1, _ATTEMPTS + 1):
                kind, value = await self._check_once(path, options, progress)
                if kind == "report":
                    assert isinstance(value, Report)
                    return value
                if kind == "unavailable":
                    raise CheckerUnavailableError(value)
                if kind != "died":
                    return self._failed(options, kind, value)
                self.replaced += 1
                log.error("validation.worker_died", attempt=attempt, cause=value)
            return self._failed(options, "died", value)

    async def _check_once(
        self, path: str, options: ValidationOptions, progress: Progress | None
    ) -> tuple[str, Any]:
        answer, handed = self._context.Pipe(duplex=False)
        count = self._context.Array("q", 2) if progress is not None else None
        limits = self._limits
        process = self._context.Process(
            target=_work,
            args=(path, options, limits.max_memory_mb, limits.max_seconds, handed, count),
            name="isales-watcher-validate",
        )
        try:
            if self._context.get_start_method() == "fork":
                process.start()  # a fork returns at once
            else:
                await asyncio.to_thread(process.start)  # may start the forkserver first
        except OSError as exc:
            self.start_error = f"cannot start a validation worker: {exc}"
            log.error("validation.start_failed", error=str(exc))
            return ("unavailable", self.start_error)
        finally:
            handed.close()
        self.start_error = None
        pid = process.pid
        assert pid is not None
        self._running[pid] = process
        receiving = asyncio.ensure_future(asyncio.to_thread(_receive, answer))
        try:
            async with _feeding(count, progress), asyncio.timeout(self._limits.max_seconds):
                kind, value = await asyncio.shield(receiving)
        except TimeoutError:
            kind, value = ("slow", None)
        finally:
            _kill_group(pid)  # the worker and any fork of it; a finished one is gone already
            await asyncio.to_thread(process.join)
            await receiving  # the pipe is closed now: the thread returns
            answer.close()
            del self._running[pid]
        if kind == "died":
            value = _death(process.exitcode)
        return kind, value

    def _failed(self, options: ValidationOptions, kind: str, detail: Any) -> Report:
        limits = self._limits
        reasons = {
            "slow": f"checking this file took longer than {limits.max_seconds:g} s, the most "
            "this service allows (validation.max_seconds); split the list into smaller files",
            "memory": f"checking this file needed more than {limits.max_memory_mb:,} MB of "
            "memory, the most this service allows (validation.max_memory_mb); split the list "
            "into smaller files",
            "died": f"the checker process died {_ATTEMPTS} times while reading this file "
            f"({detail})",
            "crashed": f"the checker failed on this file ({detail}); please report this to the "
            "operators",
        }
        log.warning("validation.failed", cause=kind)
        report = Report(examples_per_kind=options.examples_per_kind)
        report.add("check_failed", None, None, "", reasons[kind])
        return report

    def shutdown(self) -> None:
        """Kill the workers still running (the daemon stops)."""
        for pid in list(self._running):
            _kill_group(pid)


def _kill_group(pid: int) -> None:
    """Kill the worker and its fork; the worker itself too if it had no group of its own yet."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = ", as the out-of-memory killer does" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"it exited with status {exitcode} without an answer"
