"""A checker's forks: they die with it (a worker killed from outside, by the OOM killer or a
SIGKILL of the daemon, leaves no half of a check running behind it), and they send what they
found up a pipe without copies of their big arrays."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import pickle
import signal
import struct
from array import array
from typing import Any

__all__ = ("die_with_parent", "receive", "send")

_PR_SET_PDEATHSIG = 1
_SIZE = struct.Struct("<Q")


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when the one that started it goes (Linux prctl PR_SET_PDEATHSIG).

    ``parent``: its pid before the fork; if it is gone already, this process ends at once.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was asked for


def _items(typecode: str, buffer: bytearray) -> memoryview:
    """An array sent out of band, as a view of its items in the buffer it was read into."""
    items: memoryview = getattr(memoryview(buffer), "cast")(typecode)  # noqa: B009 - any code
    return items


class _Pickler(pickle.Pickler):
    """Sends each array out of band: its memory goes to the pipe as it is, never copied."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is array:
            return _items, (obj.typecode, pickle.PickleBuffer(obj))
        return NotImplemented


def send(fd: int, payload: Any) -> None:
    """Write ``payload`` to pipe ``fd`` (closed here) for :func:`receive`.

    The arrays in it are written after the rest, as they are in memory: a copy of millions of
    offsets or keys would cost as many megabytes, at the moment memory is at its highest.
    """
    buffers: list[pickle.PickleBuffer] = []
    head = io.BytesIO()
    _Pickler(head, protocol=5, buffer_callback=buffers.append).dump(payload)
    with os.fdopen(fd, "wb") as out:
        out.write(_SIZE.pack(len(buffers)))
        for buffer in buffers:
            out.write(_SIZE.pack(buffer.raw().nbytes))
        out.write(_SIZE.pack(head.tell()))
        out.write(head.getbuffer())
        for buffer in buffers:
            out.write(buffer.raw())


def _exactly(pipe: io.BufferedReader, size: int) -> bytearray | None:
    """``size`` bytes from ``pipe``, read straight into one buffer; None at an early end."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size and (read := pipe.readinto(view[got:])):
        got += read
    return buffer if got == size else None


def receive(fd: int) -> Any | None:
    """What :func:`send` wrote to pipe ``fd`` (closed here), each array as a memoryview of its
    items; None if the writer died before it had written it all."""
    with os.fdopen(fd, "rb") as pipe:
        count = _exactly(pipe, _SIZE.size)
        if count is None:
            return None
        sizes = []
        for _ in range(_SIZE.unpack(count)[0] + 1):
            size = _exactly(pipe, _SIZE.size)
            if size is None:
                return None
            sizes.append(_SIZE.unpack(size)[0])
        head = _exactly(pipe, sizes.pop())
        buffers = [_exactly(pipe, size) for size in sizes]
        if head is None or None in buffers:
            return None
        return pickle.loads(head, buffers=buffers)
