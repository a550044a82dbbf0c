"""What the commands print, and the exit codes they end with (one place for every command)."""

from __future__ import annotations

import sys

__all__ = (
    "EX_CANTCREAT",
    "EX_CONFIG",
    "EX_INVALID",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_UNAVAILABLE",
    "EX_UNREADABLE",
    "EX_USAGE",
    "fail",
    "fail_config",
    "say",
    "warn",
)

EX_OK, EX_INVALID, EX_UNREADABLE, EX_SOFTWARE, EX_CONFIG = 0, 1, 2, 70, 78
EX_USAGE, EX_UNAVAILABLE, EX_CANTCREAT = 64, 69, 73  # sysexits.h: a bad option, a service, a file


def say(text: str = "") -> None:
    """One line of a command's answer, on stdout."""
    sys.stdout.write(text + "\n")


def fail(message: str, code: int) -> int:
    """One line on stderr for each problem named; returns ``code`` for the caller to exit with.

    A message of several lines (a configuration with three mistakes) gives three lines, each
    starting with the command's name, so that none of them reads as the tail of another.
    """
    for line in message.splitlines() or [""]:
        sys.stderr.write(f"isales-watcher: {line}\n")
    return code


def warn(message: str) -> None:
    """A line on stderr about something that is ignored, before the command goes on."""
    sys.stderr.write(f"isales-watcher: warning: {message}\n")


def fail_config(error: Exception) -> int:
    """A configuration that cannot be used: each problem on a line of its own; exit 78."""
    return fail(
        "\n".join(f"configuration error: {line}" for line in str(error).splitlines()), EX_CONFIG
    )
