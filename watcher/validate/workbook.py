"""Finding the header of the first worksheet and feeding its rows to the rules."""

from __future__ import annotations

import gc
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, NoReturn

from watcher.validate.fingerprint import RowsFingerprint
from watcher.validate.forks import die_with_parent, receive, send
from watcher.validate.markup import refuse_row
from watcher.validate.report import Report, ValidationOptions
from watcher.validate.rules import RowChecker, cell_text, column_of
from watcher.validate.xlsx import FastPathUnsupported, Row, SheetReader, WorkbookRejected

__all__ = ("MAX_DATA_ROWS", "check_rows", "validate_file")

MAX_DATA_ROWS = 500_000
# What a damaged archive raises from deep inside zipfile and zlib: CRC, inflate, truncation.
_DAMAGED = (ValueError, KeyError, EOFError, OSError, zlib.error, zipfile.BadZipFile)
_HEADER_SEARCH_ROWS = 50
_BATCH = 512  # rows checked together (RowChecker.check_many)


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


def _elsewhere(other_sheets: Sequence[str]) -> str:
    if not other_sheets:
        return ""
    names = ", ".join(repr(s) for s in other_sheets)
    return f" (the data must be on the first sheet; this workbook also has {names})"


def _header(
    report: Report, rows: Iterator[Row], sheet_name: str, elsewhere: str
) -> dict[int, str] | None:
    found = _find_header(report, rows)
    if found is None:
        report.add(
            "no_header",
            None,
            None,
            "",
            f"no header row naming 'called' on sheet {sheet_name!r}{elsewhere}",
        )
        return None
    report.header_row, columns = found
    return columns


def _check_data(
    rows: Iterator[Row], checker: RowChecker, fingerprint: RowsFingerprint, report: Report
) -> None:
    check, add = checker.check, fingerprint.add
    while batch := list(islice(rows, _BATCH)):
        if report.data_rows + len(batch) <= MAX_DATA_ROWS:
            data = checker.check_many(batch)
            fingerprint.add_many(data)
            report.data_rows += len(data)
            continue
        for number, row in batch:  # near the limit: row by row, to stop at it
            if check(number, row):
                add(row)
                report.data_rows += 1
                if report.data_rows > MAX_DATA_ROWS:
                    return  # enough: the verdict is "too many rows" whatever follows


def _finish(
    checker: RowChecker, fingerprint: RowsFingerprint, report: Report, elsewhere: str
) -> None:
    if report.data_rows > MAX_DATA_ROWS:  # the rest was not read: no fingerprint of a part
        report.data_rows = MAX_DATA_ROWS
        report.add(
            "too_many_rows",
            None,
            None,
            "",
            f"more than {MAX_DATA_ROWS:,} data rows; iSales imports at most that many",
        )
        return
    checker.finish()
    report.rows_fingerprint = fingerprint.hexdigest()
    if report.data_rows == 0:
        report.add(
            "no_data_rows", None, None, "", f"there are no data rows below the header{elsewhere}"
        )


def _narrowed(
    columns: dict[int, str], keep_columns: Callable[[Iterable[int]], list[int]] | None
) -> dict[int, str]:
    """Have the reader keep only the header's template columns; the map of the rows it yields."""
    if keep_columns is None:
        return columns
    return {slot: columns[index] for slot, index in enumerate(keep_columns(columns))}


def check_rows(
    rows: Iterator[Row],
    report: Report,
    options: ValidationOptions,
    *,
    sheet_name: str,
    other_sheets: Sequence[str] = (),
    keep_columns: Callable[[Iterable[int]], list[int]] | None = None,
) -> None:
    """Find the header among ``rows``, then check every data row below it into ``report``.

    ``keep_columns`` (:meth:`SheetReader.keep_columns`) narrows the rows still to come to the
    template columns once the header is found.
    """
    elsewhere = _elsewhere(other_sheets)
    columns = _header(report, rows, sheet_name, elsewhere)
    if columns is None:
        return
    columns = _narrowed(columns, keep_columns)
    checker = RowChecker(report, columns, call_data_json=options.call_data_json)
    fingerprint = RowsFingerprint(columns)
    _check_data(rows, checker, fingerprint, report)
    _finish(checker, fingerprint, report, elsewhere)


def _check_second_half(
    reader: SheetReader, options: ValidationOptions, columns: dict[int, str], start: int, fd: int
) -> NoReturn:
    """In a forked child: check the rows after ``start`` and send the result up the pipe."""
    payload: tuple[Any, ...]
    try:
        reader.reopen()
        part = Report(examples_per_kind=options.examples_per_kind, promoted=options.promoted_kinds)
        checker = RowChecker(part, columns, call_data_json=options.call_data_json)
        fingerprint = RowsFingerprint(columns)
        _check_data(reader.part_rows(start, None), checker, fingerprint, part)
        first_row = reader.span[0]  # the parent checks it follows its own last row
        payload = ("ok", part, checker.export_repeats(), fingerprint.export(), first_row)
    except FastPathUnsupported:
        payload = ("unsupported",)
    except WorkbookRejected as exc:
        payload = ("rejected", exc.kind, exc.message)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        payload = ("damaged", f"{type(exc).__name__}: {exc}")
    try:
        send(fd, payload)
    finally:
        os._exit(0)


def _check_in_two(reader: SheetReader, report: Report, options: ValidationOptions) -> None:
    """Check the sheet with two processes: the parent takes the first half, a fork the second.

    The shared strings are loaded once, before the fork, by two processes, into shared memory
    (:meth:`SheetReader.load_strings_in_two`).

    Raises:
        FastPathUnsupported: the sheet needs the slow reader; start again serially.
    """
    elsewhere = _elsewhere(reader.other_sheets)
    reader.load_strings_in_two(options.split_min_bytes)
    # The fork also inflates the part it skips: give it a little less.
    middle = reader.sheet_bytes * 54 // 100
    first = reader.part_rows(0, middle)
    found = _find_header(report, first)
    if found is None:
        raise FastPathUnsupported("no header in the first half: let one process say why")
    report.header_row, columns = found
    columns = _narrowed(columns, reader.keep_columns)  # before the fork: the child keeps them too
    read_end, write_end = os.pipe()
    gc.freeze()  # while the halves are checked: collecting would copy the pages both share
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        die_with_parent(parent)
        os.close(read_end)
        _check_second_half(reader, options, columns, middle, write_end)
    os.close(write_end)
    try:
        checker = RowChecker(report, columns, call_data_json=options.call_data_json)
        fingerprint = RowsFingerprint(columns)
        _check_data(first, checker, fingerprint, report)
    finally:
        first.close()
        reader.drop_strings()  # free the table before the child's findings arrive
        answer = receive(read_end)
        os.waitpid(pid, 0)
        gc.unfreeze()
    payload: tuple[Any, ...] = answer or ("damaged", "the second validation process died")
    if payload[0] == "unsupported":
        raise FastPathUnsupported("in the second half")
    if payload[0] == "rejected":
        raise WorkbookRejected(payload[1], payload[2])
    if payload[0] == "damaged":
        raise ValueError(payload[1])
    first_row, last_row = payload[4], reader.span[1]
    if first_row and first_row <= last_row:  # a row repeated where the halves meet
        refuse_row(last_row, first_row)
    report.merge(payload[1])
    checker.absorb_repeats(payload[2])
    fingerprint.absorb(payload[3])
    _finish(checker, fingerprint, report, elsewhere)


def _should_split(reader: SheetReader, options: ValidationOptions) -> bool:
    return (
        options.workers > 1
        and hasattr(os, "fork")
        and reader.sheet_bytes >= options.split_min_bytes
        and (os.cpu_count() or 1) > 1
    )


def _name_sheet(report: Report, reader: SheetReader) -> None:
    """Which sheet was checked, whether Excel hides it, and which others the workbook has."""
    report.sheet = reader.sheet_name
    report.sheet_hidden = reader.sheet_hidden
    report.other_sheets = list(reader.other_sheets)


def validate_file(
    path: str | Path,
    options: ValidationOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check an ``.xlsx`` file against the outbound-call template.

    Args:
        path: the file.
        options: per-route choices and limits.
        progress: called with (bytes of sheet XML newly read, total) as reading goes on; a
            sheet checked by two processes calls it from both (see :class:`SheetReader`).

    Returns:
        The report; it is valid when it holds no error. A bad file never raises.
    """
    options = options or ValidationOptions()
    report = Report(examples_per_kind=options.examples_per_kind, promoted=options.promoted_kinds)
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
    _name_sheet(report, reader)
    try:
        if _should_split(reader, options):
            try:
                _check_in_two(reader, report, options)
                return report
            except FastPathUnsupported:
                report = Report(
                    examples_per_kind=options.examples_per_kind, promoted=options.promoted_kinds
                )
                _name_sheet(report, reader)
        check_rows(
            reader.rows(),
            report,
            options,
            sheet_name=reader.sheet_name,
            other_sheets=reader.other_sheets,
            keep_columns=reader.keep_columns,
        )
    except WorkbookRejected as exc:
        report.add(exc.kind, None, None, "", exc.message)
    except _DAMAGED as exc:
        report.add("unreadable", None, None, "", f"the workbook is damaged: {exc}")
    finally:
        reader.close()
    return report
