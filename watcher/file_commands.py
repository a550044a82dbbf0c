"""The commands on workbook files: ``validate`` (offline, as the daemon checks) and ``template``."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watcher.console import (
    EX_CANTCREAT,
    EX_INVALID,
    EX_OK,
    EX_SOFTWARE,
    EX_UNREADABLE,
    EX_USAGE,
)
from watcher.console import fail as _fail
from watcher.console import say as _print
from watcher.errors import CheckerUnavailableError
from watcher.models import escaped
from watcher.settings import ValidationSettings
from watcher.validate import KINDS, Report, ValidationOptions
from watcher.validate.pool import CheckLimits, ValidationPool

__all__ = ("add_file_commands", "seconds")


def seconds(text: str) -> float:
    """A command-line duration: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _place(row: int | None, column: str | None) -> str:
    if row is None:
        return "the file" if column is None else f"column {column}"
    return f"row {row}" + (f", column {column}" if column else "")


def _describe(report: Report, name: str) -> list[str]:
    rows = _count(report.data_rows, "data row")
    if report.is_valid:
        lines = [f"{name}: valid, {rows}"]
    else:
        lines = [f"{name}: INVALID, {_count(report.error_count, 'problem')} in {rows}"]
    for kind, count in sorted(report.counts.items()):
        lines.append(f"  {KINDS[kind].title}: {count}")
        examples = [p for p in report.examples if p.kind == kind]
        lines.extend(
            f"    {_place(p.row, p.column)}: {p.message}" for p in examples[:_EXAMPLES_PER_KIND]
        )
        if count > _EXAMPLES_PER_KIND:
            lines.append(
                f"    ... {count - _EXAMPLES_PER_KIND} more (--json lists up to 20 of each)"
            )
        lines.append(f"    fix: {KINDS[kind].advice}")
    return lines


class _Bar:
    """``NAME [#######.......]  42%`` on the terminal while a file is checked.

    Fed by the pool with the bytes every checking process has read (a big sheet is read by two
    at once); it is drawn here only, in one process, and only ever moves forward.
    """

    _WIDTH = 30

    def __init__(self, label: str) -> None:
        self.label = label
        self._shown = -1

    def __call__(self, read: int, total: int) -> None:
        percent = min(100, read * 100 // max(total, 1))
        if percent <= self._shown:
            return
        self._shown = percent
        filled = self._WIDTH * percent // 100
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self._WIDTH - filled)}] {percent:3d}%"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self._shown >= 0:
            sys.stderr.write("\r" + " " * (len(self.label) + self._WIDTH + 8) + "\r")
            sys.stderr.flush()


_EXAMPLES_PER_KIND = 10


async def _check_files(paths: Sequence[Path], limits: CheckLimits) -> list[Report]:
    """Each file in a checker of its own, under the daemon's limits: a hostile file ends too."""
    pool = ValidationPool(1, limits, start="fork")
    reports = []
    try:
        for path in paths:
            bar = _Bar(escaped(path.name)) if sys.stderr.isatty() else None
            try:
                reports.append(await pool.validate(str(path), ValidationOptions(), bar))
            finally:
                if bar is not None:
                    bar.close()
    finally:
        pool.shutdown()
    return reports


def _validate(args: argparse.Namespace) -> int:
    worst = EX_OK
    results = []
    limits = CheckLimits(args.max_seconds, args.max_memory_mb)
    files = []
    for path in args.files:  # a wrong path is the user's typo, not a broken workbook
        if path.is_file():
            files.append(path)
            continue
        worst = EX_UNREADABLE
        _fail(f"{path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}", 0)
    try:
        reports = asyncio.run(_check_files(files, limits))
    except CheckerUnavailableError as exc:
        return _fail(str(exc), EX_SOFTWARE)
    for path, report in zip(files, reports, strict=True):
        if report.is_unreadable:
            worst = max(worst, EX_UNREADABLE)
        elif not report.is_valid:
            worst = max(worst, EX_INVALID)
        if args.json:
            results.append({"file": str(path), **report.as_json()})
        else:
            for line in _describe(report, str(path)):
                _print(line)
    if args.json:
        _print(json.dumps(results, indent=2, ensure_ascii=False))
    return worst


def _template(args: argparse.Namespace) -> int:
    from xlsxwriter.exceptions import FileCreateError

    from watcher.samples import write_template

    out: Path = args.out
    if out.suffix.lower() != ".xlsx":
        return _fail(
            f"{out}: the template is an .xlsx workbook; give a name ending in .xlsx", EX_USAGE
        )
    if out.exists() and not args.force:
        return _fail(f"{out} exists already; add --force to overwrite it", EX_CANTCREAT)
    if not out.parent.is_dir():
        return _fail(f"cannot write {out}: the folder {out.parent} does not exist", EX_CANTCREAT)
    try:
        write_template(out)
    except (OSError, FileCreateError) as exc:
        return _fail(f"cannot write {out}: {exc}", EX_CANTCREAT)
    _print(f"wrote {out}")
    return EX_OK


def _megabytes(text: str) -> int:
    """A checker's memory ceiling: as ``validation.max_memory_mb``, 256 MB at the least."""
    if not text.isdigit() or int(text) < _MIN_MEMORY_MB:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MB from {_MIN_MEMORY_MB}")
    return int(text)


_MIN_MEMORY_MB = 256  # the lower bound of validation.max_memory_mb


def add_file_commands(commands: Any) -> None:
    """``validate`` and ``template``, on the sub-command parsers of the command line."""
    validate = commands.add_parser(
        "validate",
        help="check .xlsx files offline, as the daemon would",
        description="Check outbound-call lists against the iSales template, each in a checker "
        "of its own under the daemon's limits. Example: isales-watcher validate march.xlsx. "
        "Exit codes: 0 all valid, 1 a file has problems, 2 a file cannot be read (or is "
        "missing), 70 no checker could be started.",
    )
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    defaults = ValidationSettings()
    validate.add_argument(
        "--max-seconds",
        type=seconds,
        default=defaults.max_seconds,
        help=f"give up on a file after this long (default {defaults.max_seconds:g})",
    )
    validate.add_argument(
        "--max-memory-mb",
        type=_megabytes,
        default=defaults.max_memory_mb,
        help=f"memory ceiling of the checker (default {defaults.max_memory_mb})",
    )
    validate.set_defaults(handler=_validate)

    template = commands.add_parser(
        "template",
        help="write an empty template with an example row",
        description="Write the outbound-call template (.xlsx) with one example row. "
        "Example: isales-watcher template calls.xlsx. Exit codes: 0 written, 64 not an .xlsx "
        "name, 73 exists already (use --force) or cannot be written.",
    )
    template.add_argument("out", type=Path)
    template.add_argument("--force", action="store_true", help="overwrite an existing file")
    template.set_defaults(handler=_template)
