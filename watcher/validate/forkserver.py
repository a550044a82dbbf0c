"""The process the daemon's checkers are forked from, and the daemon's end of it.

A checker must start clean (not a fork of the daemon, with its threads, sockets and ledger) and
without paying for the reader's imports. The forkserver is a fresh interpreter that imports the
checker's code once (:mod:`watcher.validate.worker`) and forks one checker per request; the
checkers share those pages with it.

It is ours rather than multiprocessing's because that one starts multiprocessing's resource
tracker beside it: one more interpreter for the daemon's whole life (~7 MB), that only cleans up
named semaphores and shared memory, which checkers do not use (their answer is a pipe).

The protocol, both ends of which live here: each request is one message on a ``SOCK_SEQPACKET``
socket pair, the pickled arguments of :func:`~watcher.validate.worker.work` with two descriptors,
the write ends of the answer pipe and of a status pipe. On the status pipe the server writes the
checker's pid at once (or ``-errno`` if it could not fork), then its exit code
(``os.waitstatus_to_exitcode``) when it has ended. When the daemon's end of the socket closes, the
daemon stopped or died: the server ends, and the checkers die with it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watcher.validate.report import ValidationOptions

__all__ = ("Checker", "Request", "ask", "command", "read_answer", "serve", "write_answer")

Request = tuple[str, ValidationOptions, int, float]  # work()'s arguments before the answer pipe

_SIZE = struct.Struct("=Q")  # an answer's length, before it
_NUMBER = struct.Struct("=q")  # a pid, -errno or an exit code on a status pipe
_MAX_REQUEST = 1 << 20


class Checker:
    """One checker forked by the server: its pid, and its exit code when it has ended."""

    def __init__(self, pid: int, status: int) -> None:
        self.pid = pid
        self._status = status

    def abandon(self) -> None:
        """Stop following the checker (it has been killed): its status is not read."""
        os.close(self._status)

    def wait(self) -> int | None:
        """Block until the checker has ended: its exit code, None if the server went first."""
        try:
            return _read_number(self._status)
        finally:
            os.close(self._status)


def ask(requests: socket.socket, request: Request, answer: int) -> Checker:
    """Ask the server on ``requests`` for a checker that runs ``work(*request, answer)``.

    Blocks until it has forked (call it in a thread).

    Raises:
        ConnectionError: the server is gone; the request was not delivered.
        OSError: the server could not fork, or ended before it did.
    """
    status, handed = os.pipe()
    try:
        try:
            socket.send_fds(requests, [pickle.dumps(request)], [answer, handed])
        finally:
            os.close(handed)  # the server has its own copy: when it dies, the read below ends
        pid = _read_number(status)
    except BaseException:
        os.close(status)
        raise
    if pid is None or pid < 0:
        os.close(status)
        if pid is None:
            raise OSError("the forkserver ended before it forked a checker")
        raise OSError(-pid, os.strerror(-pid))
    return Checker(pid, status)


def write_answer(answer: int, result: tuple[str, Any]) -> None:
    """In a checker: send ``result`` up the answer pipe (its write end, closed here)."""
    try:
        data = pickle.dumps(result)
    except MemoryError:
        data = pickle.dumps(("memory", None))
    with open(answer, "wb") as pipe:
        pipe.write(_SIZE.pack(len(data)))
        pipe.write(data)


def read_answer(answer: int) -> tuple[str, Any]:
    """The checker's answer, read from ``answer`` (the pipe's read end, closed here).

    ("died", None) when the checker ended without a whole answer. The answer says its length
    first: a fork of the checker that still holds the pipe open does not hold up the reading.
    """
    with open(answer, "rb") as pipe:
        head = pipe.read(_SIZE.size)
        if len(head) < _SIZE.size:
            return ("died", None)
        (size,) = _SIZE.unpack(head)
        data = pipe.read(size)
    if len(data) < size:
        return ("died", None)
    result: tuple[str, Any] = pickle.loads(data)
    return result


def command(fd: int) -> list[str]:
    """The server's command line: serve on descriptor ``fd``.

    A fresh interpreter, isolated and without site (the checker's code is the standard library's
    and ours: no .pth hook to run, ~0.7 MB less), on the daemon's own path, this package first.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    path = [package_root, *(entry for entry in sys.path if entry != package_root)]
    code = f"import sys; sys.path[:] = {path!r}; from watcher.validate.forkserver import serve; "
    code += f"serve({fd})"
    flags = ["-I", "-S"] + (["-B"] if sys.flags.dont_write_bytecode else [])
    return [sys.executable, *flags, "-c", code]


# --- in the server --------------------------------------------------------------------------


def serve(fd: int) -> None:
    """The server's loop: a checker per request, its exit code when it ends; until EOF."""
    from watcher.validate.worker import work

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle
    woken, wake = os.pipe()
    os.set_blocking(woken, False)
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, _heard)  # a handler, so that each end wakes the loop
    statuses: dict[int, int] = {}  # checker pid -> its status pipe
    requests = socket.socket(fileno=fd)
    with selectors.DefaultSelector() as selector:
        selector.register(requests, selectors.EVENT_READ)
        selector.register(woken, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj == woken:
                    with contextlib.suppress(BlockingIOError):
                        os.read(woken, 4096)
                    _reap(statuses)
                    continue
                message, fds, _, _ = socket.recv_fds(requests, _MAX_REQUEST, 2)
                if not message:
                    return  # the daemon is gone
                if len(fds) != 2:
                    for extra in fds:
                        os.close(extra)
                    continue
                answer, status = fds
                pid = _fork(
                    work,
                    message,
                    answer,
                    [requests.fileno(), woken, wake, status, *statuses.values()],
                )
                os.close(answer)
                _write_number(status, pid)
                if pid > 0:
                    statuses[pid] = status
                else:
                    os.close(status)


def _fork(work: Callable[..., None], request: bytes, answer: int, close: list[int]) -> int:
    """Fork a checker for ``request`` that answers on ``answer``; its pid, or -errno."""
    try:
        pid = os.fork()
    except OSError as exc:
        return -(exc.errno or 1)
    if pid:
        return pid
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in close:
            os.close(fd)
        path, options, memory_mb, seconds = pickle.loads(request)
        work(path, options, memory_mb, seconds, answer)
        code = 0
    finally:
        os._exit(code)


def _heard(signum: int, frame: Any) -> None:
    """SIGCHLD: the wakeup descriptor tells the loop."""


def _reap(statuses: dict[int, int]) -> None:
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        status = statuses.pop(pid, None)
        if status is not None:
            _write_number(status, os.waitstatus_to_exitcode(wait_status))
            os.close(status)


def _write_number(fd: int, number: int) -> None:
    with contextlib.suppress(OSError):  # the daemon stopped listening: nothing to tell
        os.write(fd, _NUMBER.pack(number))


def _read_number(fd: int) -> int | None:
    data = b""
    while len(data) < _NUMBER.size:
        chunk = os.read(fd, _NUMBER.size - len(data))
        if not chunk:
            return None
        data += chunk
    number: int = _NUMBER.unpack(data)[0]
    return number
