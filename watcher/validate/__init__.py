"""Validation of an outbound-call list against the iSales template (SPEC section 4).

CPU-bound: the daemon runs :func:`validate_file` in a process pool, never on the event loop.
The reader itself is imported on first use of :func:`validate_file`: the daemon only needs the
report (its checkers import the reader, in the forkserver).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from watcher.validate.report import KINDS, Problem, Report, ValidationOptions

if TYPE_CHECKING:
    from watcher.validate.workbook import validate_file

__all__ = ("KINDS", "Problem", "Report", "ValidationOptions", "validate_file")


def __getattr__(name: str) -> Any:
    if name == "validate_file":
        from watcher.validate.workbook import validate_file

        return validate_file
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
