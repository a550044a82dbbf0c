"""A big sheet is checked by two processes; the verdict must equal the one of a single process."""

from __future__ import annotations

import pytest

from tests.corpus import inline_row, raw_sheet
from tests.workbooks import HEADER, rows_valid, xlsxwriter_bytes
from watcher.validate import ValidationOptions, validate_file

SERIAL = ValidationOptions(workers=1)
SPLIT = ValidationOptions(workers=2, split_min_bytes=1)


def rows_with_problems(count: int) -> list[list[object]]:
    rows = rows_valid(count)
    for i in range(0, count, 97):
        rows[i][5] = "2026-02-30 10:00:00"
    rows[count - 3][0] = rows[2][0]  # a sessionId repeated across the two halves
    rows[count - 2][1] = rows[1][1]  # and a number
    return rows


@pytest.mark.parametrize("inline", [False, True])
def test_two_processes_find_exactly_what_one_finds(tmp_path, inline):
    path = tmp_path / "big.xlsx"
    rows = rows_with_problems(3000)
    if inline:
        body = "".join(inline_row(n + 2, *map(str, row)) for n, row in enumerate(rows))
        path.write_bytes(raw_sheet(inline_row(1, *HEADER) + body))
    else:
        path.write_bytes(xlsxwriter_bytes(rows))
    serial, split = validate_file(path, SERIAL), validate_file(path, SPLIT)
    assert split.counts == serial.counts
    assert split.counts["duplicate_session_id"] == 1
    assert split.counts["duplicate_called_no"] == 1
    assert split.data_rows == serial.data_rows == 3000
    assert [(p.row, p.kind) for p in split.examples] == [(p.row, p.kind) for p in serial.examples]


def test_a_sheet_the_fast_path_cannot_read_is_read_again_serially(tmp_path):
    path = tmp_path / "prefixed.xlsx"
    body = "".join(
        inline_row(n, f"s{n}", f'[{{"calledNo":"{n}"}}]', prefix="x") for n in range(2, 400)
    )
    path.write_bytes(raw_sheet(inline_row(1, *HEADER[:2], prefix="x") + body, prefix="x"))
    report = validate_file(path, SPLIT)
    assert report.is_valid
    assert report.data_rows == 398


def test_a_problem_in_the_second_half_reaches_the_verdict(tmp_path):
    path = tmp_path / "late.xlsx"
    body = "".join(inline_row(n, f"s{n}", f'[{{"calledNo":"{n}"}}]') for n in range(2, 9000))
    body += '<row r="9000"><c r="B9000" t="s"><v>99999</v></c></row>'  # no such shared string
    path.write_bytes(raw_sheet(inline_row(1, *HEADER[:2]) + body))
    report = validate_file(path, SPLIT)
    assert "unreadable" in report.counts
    assert "shared string" in report.examples[0].message
