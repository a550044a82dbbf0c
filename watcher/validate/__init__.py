"""Validation of an outbound-call list against the iSales template (SPEC section 4).

CPU-bound: the daemon runs :func:`validate_file` in a process pool, never on the event loop.
"""

from watcher.validate.report import KINDS, Problem, Report, ValidationOptions
from watcher.validate.workbook import validate_file

__all__ = ("KINDS", "Problem", "Report", "ValidationOptions", "validate_file")
