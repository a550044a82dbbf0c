"""Reading the first worksheet, finding the header and feeding rows to the rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from python_calamine import CalamineError, CalamineWorkbook

from watcher.validate.report import Report, ValidationOptions
from watcher.validate.rules import RowChecker, cell_text, column_of

__all__ = ("MAX_DATA_ROWS", "validate_file")

MAX_DATA_ROWS = 500_000
_HEADER_SEARCH_ROWS = 50


def _find_header(rows: list[list[Any]]) -> tuple[int, dict[int, str], list[str]] | None:
    for index, row in enumerate(rows):
        columns = {i: name for i, cell in enumerate(row) if (name := column_of(cell)) is not None}
        if "called" in columns.values() and len(columns) >= 2:
            unknown = [cell_text(c) for i, c in enumerate(row) if i not in columns and cell_text(c)]
            return index, columns, unknown
    return None


def validate_file(path: str | Path, options: ValidationOptions | None = None) -> Report:
    """Check an ``.xlsx`` file against the outbound-call template.

    Returns:
        The report; it is valid when it holds no error. Never raises for a bad file.
    """
    options = options or ValidationOptions()
    report = Report(max_examples=options.max_examples)
    try:
        workbook = CalamineWorkbook.from_path(str(path))
        sheet_name = workbook.sheet_names[0]
        sheet = workbook.get_sheet_by_index(0)
        rows = sheet.iter_rows()
        start_row = sheet.start[0] if sheet.start else 0
    except (CalamineError, OSError, IndexError, ValueError) as exc:
        report.add("unreadable", None, None, "", f"the workbook cannot be read: {exc}")
        return report
    report.sheet = sheet_name
    head: list[list[Any]] = []
    for row in rows:
        head.append(row)
        if len(head) >= _HEADER_SEARCH_ROWS:
            break
    found = _find_header(head)
    if found is None:
        report.add(
            "no_header", None, None, "", f"no header row naming 'called' on sheet {sheet_name!r}"
        )
        return report
    header_index, columns, unknown = found
    report.header_row = start_row + header_index + 1
    for name in unknown:
        report.add("unknown_column", report.header_row, name, name, f"column {name!r} is ignored")
    checker = RowChecker(report, call_data_json=options.call_data_json)

    def check(row_number: int, row: list[Any]) -> bool:
        cells = {name: row[i] for i, name in columns.items() if i < len(row)}
        if all(v is None or v == "" for v in row):
            return True
        report.data_rows += 1
        if report.data_rows > MAX_DATA_ROWS:
            report.data_rows -= 1
            report.add(
                "too_many_rows",
                row_number,
                None,
                "",
                f"more than {MAX_DATA_ROWS:,} data rows; reading stopped here",
            )
            return False
        checker.check(row_number, cells)
        return True

    number = start_row + header_index + 1
    for row in head[header_index + 1 :]:
        number += 1
        if not check(number, row):
            return report
    try:
        for row in rows:
            number += 1
            if not check(number, row):
                return report
    except CalamineError as exc:
        report.add(
            "unreadable", number, None, "", f"the sheet cannot be read past row {number}: {exc}"
        )
    if report.data_rows == 0:
        report.add("no_data_rows", None, None, "", "there are no data rows below the header")
    return report
