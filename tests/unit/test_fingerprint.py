"""The rows fingerprint names the list, not the bytes: re-exports match, other customers do not."""

from __future__ import annotations

import hashlib
import io
import random
import re
import zipfile
from datetime import UTC, datetime

import openpyxl
import xlsxwriter

from tests.workbooks import HEADER, openpyxl_bytes, rows_valid, xlsxwriter_bytes
from watcher.validate import Report, ValidationOptions, validate_file
from watcher.validate.fingerprint import RowsFingerprint

SERIAL = ValidationOptions(workers=1)
SPLIT = ValidationOptions(workers=2, split_min_bytes=1)


def fingerprint_of(tmp_path, data, name="f.xlsx", options=SERIAL):
    path = tmp_path / name
    path.write_bytes(data)
    report = validate_file(path, options)
    assert report.is_valid, report.as_json()
    return report.rows_fingerprint


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def exported_at(rows, created, header=HEADER):
    """What a CRM export does: the same rows, stamped with the time of the export."""
    out = io.BytesIO()
    book = xlsxwriter.Workbook(out, {"in_memory": True})
    book.set_properties({"created": created, "comments": f"exported {created:%H:%M:%S}"})
    sheet = book.add_worksheet("export")
    sheet.write_row(0, 0, header)
    for i, row in enumerate(rows, start=1):
        sheet.write_row(i, 0, row)
    book.close()
    return out.getvalue()


def reordered(rows, header, order):
    """The same table with its columns in ``order`` (names of ``header``)."""
    picks = [header.index(name) for name in order]
    return [[row[i] for i in picks] for row in rows]


def test_the_same_rows_exported_twice_are_the_same_list(tmp_path):
    rows = rows_valid(50)
    first = exported_at(rows, datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC))
    second = exported_at(rows, datetime(2026, 3, 1, 9, 0, 4, tzinfo=UTC))
    assert sha256(first) != sha256(second)
    fingerprint = fingerprint_of(tmp_path, first, "a.xlsx")
    assert fingerprint == fingerprint_of(tmp_path, second, "b.xlsx")
    assert re.fullmatch(r"rows-v1:50:[0-9a-f]{64}", fingerprint)


def test_openpyxl_and_xlsxwriter_write_the_same_list(tmp_path):
    rows = rows_valid(40)
    by_openpyxl, by_xlsxwriter = openpyxl_bytes(rows), xlsxwriter_bytes(rows)
    assert sha256(by_openpyxl) != sha256(by_xlsxwriter)
    assert fingerprint_of(tmp_path, by_openpyxl, "o.xlsx") == fingerprint_of(
        tmp_path, by_xlsxwriter, "x.xlsx"
    )


def test_columns_in_another_order_are_the_same_list(tmp_path):
    rows = rows_valid(30)
    order = ["recycleTime", "called", "customField", "sessionId", "callData", "caller"]
    moved = xlsxwriter_bytes(reordered(rows, HEADER, order), order)
    assert fingerprint_of(tmp_path, xlsxwriter_bytes(rows), "a.xlsx") == fingerprint_of(
        tmp_path, moved, "b.xlsx"
    )


def test_rows_in_another_order_are_the_same_list(tmp_path):
    rows = rows_valid(60)
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != rows
    assert fingerprint_of(tmp_path, xlsxwriter_bytes(rows), "a.xlsx") == fingerprint_of(
        tmp_path, openpyxl_bytes(shuffled), "b.xlsx"
    )


def test_an_unknown_column_does_not_change_the_list(tmp_path):
    rows = rows_valid(20)
    with_notes = [[*row, f"agent note {i}"] for i, row in enumerate(rows)]
    path = tmp_path / "notes.xlsx"
    path.write_bytes(xlsxwriter_bytes(with_notes, [*HEADER, "Notes"]))
    report = validate_file(path, SERIAL)
    assert report.counts == {"unknown_column": 1}  # ignored, and said so
    assert report.rows_fingerprint == fingerprint_of(tmp_path, xlsxwriter_bytes(rows))


def test_a_number_cell_is_the_same_as_its_digits_as_text(tmp_path):
    as_text = rows_valid(10)
    as_numbers = [row[:] for row in as_text]
    for row in as_numbers:
        row[HEADER.index("caller")] = 95555  # a number cell, as Excel makes of typed digits
    numbers = xlsxwriter_bytes(as_numbers)
    assert b"<v>95555</v>" in _sheet_xml(numbers)
    assert fingerprint_of(tmp_path, numbers, "n.xlsx") == fingerprint_of(
        tmp_path, xlsxwriter_bytes(as_text), "t.xlsx"
    )


def test_formats_annotations_whitespace_dates_and_empty_rows_do_not_matter(tmp_path):
    rows = rows_valid(12)
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append([f"{name} (Mandatory)" if name == "called" else name for name in HEADER])
    for i, row in enumerate(rows):
        if i == 5:
            sheet.append([])  # an empty row in the middle of the list
            sheet.append([None] * len(HEADER))
        messy = [f"  {value} " if isinstance(value, str) else value for value in row]
        # A date cell: Excel dates have no time zone.
        messy[HEADER.index("recycleTime")] = datetime(2026, 12, 31, 18, 0, 0)  # noqa: DTZ001
        sheet.append(messy)
        sheet.cell(sheet.max_row, 1).font = openpyxl.styles.Font(bold=True)
    out = io.BytesIO()
    book.save(out)
    path = tmp_path / "messy.xlsx"
    path.write_bytes(out.getvalue())
    report = validate_file(path, SERIAL)
    assert report.data_rows == 12
    assert report.rows_fingerprint == fingerprint_of(tmp_path, xlsxwriter_bytes(rows))


def test_an_empty_column_is_the_same_as_no_column(tmp_path):
    rows = rows_valid(8)
    with_priority = [[*row, None] for row in rows]
    assert fingerprint_of(
        tmp_path, xlsxwriter_bytes(with_priority, [*HEADER, "priority"]), "p.xlsx"
    ) == fingerprint_of(tmp_path, xlsxwriter_bytes(rows), "n.xlsx")


def test_one_changed_cell_is_another_list(tmp_path):
    rows = rows_valid(25)
    changed = [row[:] for row in rows]
    changed[17][HEADER.index("customField")] = "vvip"
    assert fingerprint_of(tmp_path, xlsxwriter_bytes(rows), "a.xlsx") != fingerprint_of(
        tmp_path, xlsxwriter_bytes(changed), "b.xlsx"
    )


def test_a_value_moved_to_another_column_is_another_list(tmp_path):
    rows = rows_valid(5)
    moved = [row[:] for row in rows]
    caller, custom = HEADER.index("caller"), HEADER.index("customField")
    moved[2][caller], moved[2][custom] = moved[2][custom], moved[2][caller]
    assert fingerprint_of(tmp_path, xlsxwriter_bytes(rows), "a.xlsx") != fingerprint_of(
        tmp_path, xlsxwriter_bytes(moved), "b.xlsx"
    )


def test_one_more_row_is_another_list(tmp_path):
    rows = rows_valid(25)
    longer = fingerprint_of(tmp_path, xlsxwriter_bytes(rows), "a.xlsx")
    shorter = fingerprint_of(tmp_path, xlsxwriter_bytes(rows[:-1]), "b.xlsx")
    assert longer != shorter
    assert (longer.split(":")[1], shorter.split(":")[1]) == ("25", "24")


def test_a_row_given_twice_counts_twice(tmp_path):
    rows = rows_valid(25)
    repeated = [*rows, rows[9]]
    path = tmp_path / "twice.xlsx"
    path.write_bytes(xlsxwriter_bytes(repeated))
    report = validate_file(path, SERIAL)
    assert report.counts == {"duplicate_session_id": 1, "duplicate_called_no": 1}  # warnings
    assert report.rows_fingerprint != fingerprint_of(tmp_path, xlsxwriter_bytes(rows))


def test_two_processes_give_the_fingerprint_of_one(tmp_path):
    path = tmp_path / "big.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows_valid(3000)))
    serial, split = validate_file(path, SERIAL), validate_file(path, SPLIT)
    assert split.data_rows == serial.data_rows == 3000
    assert split.rows_fingerprint == serial.rows_fingerprint
    assert serial.rows_fingerprint is not None
    assert serial.rows_fingerprint.startswith("rows-v1:3000:")


def test_the_fingerprint_is_the_same_on_every_machine_and_run(tmp_path):
    # Pinned: a change of encoding must come with a new version prefix, never silently. One
    # row's sum is its own digest: BLAKE2b-256 of its texts in column-name order, joined by
    # U+001F (callData, called, caller, customField, priority, recycleTime, sessionId).
    row = ["s1", '[{"calledNo":"13900000001"}]', "95555", '{"n":1}', "vip", "2026-12-31 18:00:00"]
    texts = ['{"n":1}', '[{"calledNo":"13900000001"}]', "95555", "vip", "", row[5], "s1"]
    digest = hashlib.blake2b("\x1f".join(texts).encode(), digest_size=32).hexdigest()
    assert digest == "f83153a6c38a615d20356ac99c4bebb3179d1b0ac812489a9e421e5a2bc72faf"
    assert fingerprint_of(tmp_path, xlsxwriter_bytes([row])) == f"rows-v1:1:{digest}"


def test_a_separator_inside_a_cell_cannot_make_two_rows_alike():
    def fingerprint(*rows):
        accumulated = RowsFingerprint({0: "called", 1: "caller"})
        for row in rows:
            accumulated.add(list(row))
        return accumulated.hexdigest()

    assert fingerprint(["a\x1fb", "c"]) != fingerprint(["a", "b\x1fc"])
    assert fingerprint(["a\x1fb", "c"]) == fingerprint([" a\x1fb", "c "])
    assert fingerprint(["\ud800", "c"]) != fingerprint(["\ufffd", "c"])  # not UTF-8, still fine


def test_the_fingerprint_travels_with_the_report(tmp_path):
    path = tmp_path / "f.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows_valid(3)))
    report = validate_file(path, SERIAL)
    data = report.as_json()
    assert data["rows_fingerprint"] == report.rows_fingerprint
    assert Report.from_json(data).rows_fingerprint == report.rows_fingerprint


def test_a_file_that_cannot_be_read_has_no_fingerprint(tmp_path):
    path = tmp_path / "broken.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows_valid(3))[:500])
    report = validate_file(path, SERIAL)
    assert report.is_unreadable
    assert report.rows_fingerprint is None
    assert report.as_json()["rows_fingerprint"] is None


def _sheet_xml(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read("xl/worksheets/sheet1.xml")
