"""The validation workers: one process per file, under limits the daemon enforces from outside.

A hostile workbook may make its checker run for ever or eat all memory. Each file is checked in
a process of its own (forked from a forkserver that has already imported the reader, see
:mod:`watcher.validate.forkserver`), in a
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
import multiprocessing
import os
import signal
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any, Literal, Protocol

import structlog

from watcher.errors import CheckerUnavailableError
from watcher.validate.forkserver import Checker, Request, ask, command, read_answer
from watcher.validate.report import Report, ValidationOptions

__all__ = ("CheckLimits", "ValidationPool")

log = structlog.get_logger(__name__)

_ATTEMPTS = 2  # a checker killed from outside gets one more try
_STOP_WAIT_S = 5.0  # for the forkserver to end once its socket is closed
_PROGRESS_EVERY_S = 0.1  # how often the shared count is read for a progress display
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class CheckLimits:
    """What one file's check may spend."""

    max_seconds: float
    max_memory_mb: int


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


class _Checker(Protocol):
    pid: int

    def abandon(self) -> None: ...

    def wait(self) -> int | None: ...


class _Forkserver:
    """The forkserver's process: started on first use, again when it has died, stopped with us."""

    def __init__(self) -> None:
        self._server: subprocess.Popen[bytes] | None = None
        self._requests: socket.socket | None = None
        self._lock = threading.Lock()  # start() runs in threads
        self._closed = False  # stopped with the pool: a check still running is not tried again

    def start(self, request: Request, answer: int) -> Checker:
        """A checker for ``request`` answering on ``answer``; blocks (call it in a thread).

        Raises:
            OSError: the server could not be started, or could not fork.
        """
        with self._lock:
            requests = self._running()
        try:
            return ask(requests, request, answer)
        except ConnectionError:  # it died since it last forked: the request never reached it
            with self._lock:
                self._stop()
                requests = self._running()
            return ask(requests, request, answer)

    def kill(self) -> None:
        """Kill a server that does not answer (stopped, or stuck); the next start starts one."""
        with self._lock:
            if self._server is not None:
                self._server.kill()

    def close(self) -> None:
        """Stop the server, for good."""
        with self._lock:
            self._closed = True
            self._stop()

    def _stop(self) -> None:
        if self._requests is not None:
            self._requests.close()  # the server ends when its socket closes
            self._requests = None
        if self._server is not None:
            try:
                self._server.wait(_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = None

    def _running(self) -> socket.socket:
        if self._closed:
            raise OSError("the validation pool is shut down")
        if self._server is not None and self._server.poll() is None and self._requests is not None:
            return self._requests
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._server = subprocess.Popen(
                command(theirs.fileno()), pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL
            )
        self._requests = ours
        return ours


class _Forked:
    """A checker forked by the pool's own process (a one-shot command)."""

    def __init__(self, process: BaseProcess) -> None:
        assert process.pid is not None
        self.pid = process.pid
        self._process = process

    def abandon(self) -> None:
        """Nothing to let go of: the pool's own fork is reaped by multiprocessing."""

    def wait(self) -> int | None:
        self._process.join()
        return self._process.exitcode


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
        self._fork = multiprocessing.get_context("fork")
        self._forkserver = _Forkserver() if start == "forkserver" else None
        self._running: dict[int, _Checker] = {}
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
                Only a pool that forks itself (``start="fork"``) can tell: a forkserver's
                checkers share no memory with this process.

        Raises:
            CheckerUnavailableError: no worker could be started; the file was not judged.
            ValueError: ``progress`` for a pool whose checkers come from a forkserver.
        """
        if progress is not None and self._forkserver is not None:
            raise ValueError("only a pool started with start='fork' can tell the progress")
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
        answer, handed = os.pipe()
        count = self._fork.Array("q", 2) if progress is not None else None
        limits = self._limits
        request = (path, options, limits.max_memory_mb, limits.max_seconds)
        starting = asyncio.ensure_future(self._start(request, handed, count))
        try:
            checker = await self._started(starting)
        except asyncio.CancelledError:
            # The start goes on in its thread, with both ends of the pipe: let it end, then
            # let go of what it started.
            starting.add_done_callback(partial(_abandon, answer, handed))
            raise
        except OSError as exc:
            os.close(answer)
            os.close(handed)
            self.start_error = f"cannot start a validation worker: {exc}"
            log.error("validation.start_failed", error=str(exc))
            return ("unavailable", self.start_error)
        os.close(handed)
        self.start_error = None
        pid = checker.pid
        self._running[pid] = checker
        receiving = asyncio.ensure_future(asyncio.to_thread(read_answer, answer))
        try:
            async with _feeding(count, progress), asyncio.timeout(self._limits.max_seconds):
                kind, value = await asyncio.shield(receiving)
        except TimeoutError:
            kind, value = ("slow", None)
        finally:
            _kill_group(pid)  # the worker and any fork of it; a finished one is gone already
            exitcode = await asyncio.to_thread(checker.wait)
            await receiving  # the pipe is closed now: the thread returns
            del self._running[pid]
        if kind == "died":
            value = _death(exitcode)
        return kind, value

    async def _started(self, starting: asyncio.Future[_Checker]) -> _Checker:
        """The checker ``starting`` starts, within the wall-clock limit of a check.

        A forkserver that does not answer in that time (stopped, or stuck) is killed: the
        start then fails, and the next one starts a new server.
        """
        try:
            async with asyncio.timeout(self._limits.max_seconds):
                return await asyncio.shield(starting)
        except TimeoutError:
            log.error("validation.forkserver_stuck", waited_s=self._limits.max_seconds)
            if self._forkserver is not None:
                self._forkserver.kill()
            return await asyncio.shield(starting)

    async def _start(
        self, request: Request, answer: int, count: SynchronizedArray[int] | None
    ) -> _Checker:
        if self._forkserver is not None:
            # Blocks until the server has forked (and first starts it, if it is not running).
            return await asyncio.to_thread(self._forkserver.start, request, answer)
        from watcher.validate.worker import work

        process = self._fork.Process(
            target=work, args=(*request, answer, count), name="isales-watcher-validate"
        )
        process.start()  # a fork returns at once
        return _Forked(process)

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
        """Kill the workers still running, stop the forkserver (the daemon stops)."""
        for pid in list(self._running):
            _kill_group(pid)
        if self._forkserver is not None:
            self._forkserver.close()


def _abandon(answer: int, handed: int, starting: asyncio.Future[_Checker]) -> None:
    """After a start whose check was cancelled: kill the checker it started, close the pipe."""
    os.close(handed)
    os.close(answer)
    if starting.cancelled() or starting.exception() is not None:
        return
    checker = starting.result()
    _kill_group(checker.pid)
    checker.abandon()


def _kill_group(pid: int) -> None:
    """Kill the worker and its fork; the worker itself too if it had no group of its own yet."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "its forkserver ended"
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = ", as the out-of-memory killer does" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"it exited with status {exitcode} without an answer"
