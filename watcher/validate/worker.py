"""What runs in a checker process: its limits, the check, and the answer it sends up a pipe.

The forkserver imports this module (and with it the reader) once; each checker forked from it
finds everything imported already, so no file pays for an import.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import signal
from typing import TYPE_CHECKING, Any

from watcher.validate.forks import die_with_parent
from watcher.validate.forkserver import write_answer
from watcher.validate.report import ValidationOptions
from watcher.validate.workbook import validate_file

if TYPE_CHECKING:  # the forkserver would import multiprocessing's shared memory for a name
    from multiprocessing.sharedctypes import SynchronizedArray

__all__ = ("work",)

_MB = 1 << 20


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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _give_back_freed_memory() -> None:
    """Have glibc's malloc give freed memory back to the system, not keep it for later.

    A check allocates and frees pieces of sheet and their lists of cells one after another.
    glibc raises its thresholds for mapping big blocks apart and for trimming its heap as big
    blocks are freed, and then keeps freed memory in the heap: on a list of 500,000 rows with
    shared strings, the tree's peak is ~5 MB lower with the thresholds fixed at 1 MB
    (``bench/validate.py``). Where there is no glibc (musl), nothing changes.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 20)


def work(
    path: str,
    options: ValidationOptions,
    memory_mb: int,
    seconds: float,
    answer: int,
    count: SynchronizedArray[int] | None = None,
) -> None:
    """In the checker: own process group, memory ceiling, check, send the report up ``answer``.

    Args:
        path: the file.
        options: the route's choices and limits.
        memory_mb: the address-space ceiling.
        seconds: the daemon's wall-clock limit; a CPU limit a little past it backs it up.
        answer: the write end of the answer pipe; closed here.
        count: the shared progress count, if someone follows it.
    """
    os.setpgid(0, 0)  # Ctrl-C reaches the daemon's group, not this one; a kill reaches the fork
    _give_back_freed_memory()
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
    write_answer(answer, result)
