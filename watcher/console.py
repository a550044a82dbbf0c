"""What the commands print, and the exit codes they end with (one place for every command)."""

from __future__ import annotations

import sys

__all__ = ("EX_CONFIG", "EX_INVALID", "EX_OK", "EX_SOFTWARE", "EX_UNREADABLE", "fail", "say")

EX_OK, EX_INVALID, EX_UNREADABLE, EX_SOFTWARE, EX_CONFIG = 0, 1, 2, 70, 78


def say(text: str = "") -> None:
    """One line of a command's answer, on stdout."""
    sys.stdout.write(text + "\n")


def fail(message: str, code: int) -> int:
    """One line on stderr naming the problem; returns ``code`` for the caller to exit with."""
    sys.stderr.write(f"isales-watcher: {message}\n")
    return code
