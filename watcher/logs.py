"""Logging: structlog, JSON lines when not on a terminal, readable lines when on one."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog

from watcher.models import escaped

__all__ = ("SafeLogger", "configure_logging")


class _Sink:
    """One output stream, and whether it has failed (shared by every logger writing to it)."""

    __slots__ = ("broken", "stream")

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False


class SafeLogger:
    """A structlog logger that a broken sink cannot break.

    Writing to a closed pipe (``make demo | tee log``, then ``tee`` dies) or a full disk must
    never stop a stop, a drain or a ledger write. The first failure is reported once, to the
    other standard stream if that still works, and the sink is dropped from then on.
    """

    def __init__(self, sink: _Sink | TextIO) -> None:
        self._sink = sink if isinstance(sink, _Sink) else _Sink(sink)

    def msg(self, message: str) -> None:
        sink = self._sink
        if sink.broken:
            return
        try:
            sink.stream.write(message + "\n")
            sink.stream.flush()
        except (OSError, ValueError) as exc:  # EPIPE, ENOSPC, a closed file
            sink.broken = True
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
        other = sys.stdout if self._sink.stream is not sys.stdout else sys.stderr
        try:
            other.write(
                f"isales-watcher: logging stopped: cannot write the log ({type(exc).__name__}: "
                f"{exc}); the daemon goes on without it\n"
            )
            other.flush()
        except (OSError, ValueError):
            pass

    log = debug = info = warning = warn = error = err = critical = exception = fatal = msg


def _safe_factory(stream: TextIO) -> structlog.typing.WrappedLogger:
    sink = _Sink(stream)

    def make(*args: object) -> SafeLogger:
        return SafeLogger(sink)

    return make


def _escape_controls(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """On a terminal, a newline or an escape sequence in a file name is shown, not obeyed."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = escaped(value)
    return event


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Set up structlog (and route the standard library's logging through the same output)."""
    if json is None:
        json = not sys.stderr.isatty()
    # Colours only on a terminal, and never when NO_COLOR is set (https://no-color.org).
    colors = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=colors)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if json
            else structlog.processors.StackInfoRenderer(),
            *(() if json else (_escape_controls,)),  # JSON escapes them itself
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_safe_factory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.raiseExceptions = False  # a broken stderr must not raise out of a log call
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
