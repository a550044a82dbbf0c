"""Finding the header of the first worksheet and feeding its rows to the rules."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from watcher.validate.report import Report, ValidationOptions
from watcher.validate.rules import RowChecker, cell_text, column_of
from watcher.validate.xlsx import Row, SheetReader, WorkbookRejected

__all__ = ("MAX_DATA_ROWS", "check_rows", "validate_file")

MAX_DATA_ROWS = 500_000
# What a damaged archive raises from deep inside zipfile and zlib: CRC, inflate, truncation.
_DAMAGED = (ValueError, KeyError, EOFError, OSError, zlib.error, zipfile.BadZipFile)
_HEADER_SEARCH_ROWS = 50


def _find_header(report: Report, rows: Iterator[Row]) -> tuple[int, dict[int, str]] | None:
    """The first row naming ``called`` and another template column, and its column map."""
    for searched, (number, row) in enumerate(rows):
        columns = {i: name for i, cell in enumerate(row) if (name := column_of(cell)) is not None}
        if "called" not in columns.values() or len(columns) < 2:
            if searched >= _HEADER_SEARCH_ROWS:
                return None
            continue
        seen: dict[str, int] = {}
        for index, name in sorted(columns.items()):
            if name in seen:
                report.add(
                    "duplicate_header",
                    number,
                    name,
                    cell_text(row[index]),
                    f"column {name} appears twice (columns {seen[name] + 1} and {index + 1})",
                )
            seen.setdefault(name, index)
        for index, cell in enumerate(row):
            if index not in columns and cell_text(cell):
                report.add(
                    "unknown_column",
                    number,
                    cell_text(cell),
                    cell_text(cell),
                    f"column {cell_text(cell)!r} is not in the template and is ignored",
                )
        return number, {index: name for name, index in seen.items()}
    return None


def check_rows(
    rows: Iterator[Row],
    report: Report,
    options: ValidationOptions,
    *,
    sheet_name: str,
    other_sheets: Sequence[str] = (),
) -> None:
    """Find the header among ``rows``, then check every data row below it into ``report``."""
    found = _find_header(report, rows)
    elsewhere = (
        f" (the data must be on the first sheet; this workbook also has "
        f"{', '.join(repr(s) for s in other_sheets)})"
        if other_sheets
        else ""
    )
    if found is None:
        report.add(
            "no_header",
            None,
            None,
            "",
            f"no header row naming 'called' on sheet {sheet_name!r}{elsewhere}",
        )
        return
    report.header_row, columns = found
    checker = RowChecker(report, columns, call_data_json=options.call_data_json)
    check = checker.check
    for number, row in rows:
        if not check(number, row):
            continue
        report.data_rows += 1
        if report.data_rows > MAX_DATA_ROWS:
            report.data_rows -= 1
            report.add(
                "too_many_rows",
                number,
                None,
                "",
                f"more than {MAX_DATA_ROWS:,} data rows; reading stopped at row {number}",
            )
            return
    checker.finish()
    if report.data_rows == 0:
        report.add(
            "no_data_rows", None, None, "", f"there are no data rows below the header{elsewhere}"
        )


def validate_file(
    path: str | Path,
    options: ValidationOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check an ``.xlsx`` file against the outbound-call template.

    Args:
        path: the file.
        options: per-route choices and limits.
        progress: called with (bytes of sheet XML read, total) as reading goes on.

    Returns:
        The report; it is valid when it holds no error. A bad file never raises.
    """
    options = options or ValidationOptions()
    report = Report(max_examples=options.max_examples, promoted=options.promoted_kinds)
    try:
        reader = SheetReader(str(path), options.limits, progress)
    except WorkbookRejected as exc:
        report.add(exc.kind, None, None, "", exc.message)
        return report
    except FileNotFoundError:
        report.add("unreadable", None, None, "", "the file does not exist")
        return report
    except _DAMAGED as exc:
        report.add("unreadable", None, None, "", f"the workbook is damaged: {exc}")
        return report
    report.sheet = reader.sheet_name
    try:
        check_rows(
            reader.rows(),
            report,
            options,
            sheet_name=reader.sheet_name,
            other_sheets=reader.other_sheets,
        )
    except WorkbookRejected as exc:
        report.add(exc.kind, None, None, "", exc.message)
    except _DAMAGED as exc:
        report.add("unreadable", None, None, "", f"the workbook is damaged: {exc}")
    finally:
        reader.close()
    return report
