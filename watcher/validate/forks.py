"""A checker's forks die with it: a worker killed from outside (the OOM killer, a SIGKILL of the
daemon) leaves no half of a check running behind it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

__all__ = ("die_with_parent",)

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when the one that started it goes (Linux prctl PR_SET_PDEATHSIG).

    ``parent``: its pid before the fork; if it is gone already, this process ends at once.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was asked for
