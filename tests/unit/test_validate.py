"""Validation rules on real workbooks written by xlsxwriter and openpyxl."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import pytest

from tests.workbooks import HEADER, openpyxl_bytes, rows_valid, xlsxwriter_bytes
from watcher.validate import validate_file


@pytest.fixture(params=["xlsxwriter", "openpyxl"])
def write(request, tmp_path):
    writer = xlsxwriter_bytes if request.param == "xlsxwriter" else openpyxl_bytes

    def make(rows, header=HEADER):
        path = tmp_path / "f.xlsx"
        path.write_bytes(writer(rows, header))
        return path

    return make


def kinds(report):
    return {(p.row, p.kind) for p in report.examples}


def test_a_valid_list(write):
    report = validate_file(write(rows_valid(50)))
    assert report.is_valid
    assert (report.data_rows, report.header_row) == (50, 1)


@pytest.mark.parametrize(
    ("column", "value", "kind"),
    [
        ("called", "", "called_missing"),
        ("called", "13800138000", "called_not_json"),
        ("called", "[]", "called_missing"),
        ("called", '[{"calledNo":"138 0013"}]', "calledno_invalid"),
        ("called", '[{"calledNo":"' + "1" * 25 + '"}]', "calledno_too_long"),
        ("called", '[{"delayTime":"3"}]', "calledno_missing"),
        ("called", '[{"calledNo":"1","delayTime":"9000"}]', "delaytime_invalid"),
        ("called", '[{"calledNo":1.5e10}]', "calledno_invalid"),
        ("sessionId", "s" * 33, "sessionid_too_long"),
        ("caller", "9" * 25, "caller_too_long"),
        ("customField", "x" * 201, "customfield_too_long"),
        ("callData", "x" * 1025, "calldata_too_long"),
        ("recycleTime", "2026/02/15 10:00", "recycletime_invalid"),
        ("recycleTime", "2026-02-30 10:00:00", "recycletime_invalid"),
        ("caller", 12345678901234567, "number_corrupted"),
    ],
)
def test_each_rule_names_the_excel_row(write, column, value, kind):
    rows = rows_valid(5)
    rows[2][HEADER.index(column)] = value  # Excel row 4: header on row 1
    report = validate_file(write(rows))
    assert not report.is_valid
    assert kinds(report) == {(4, kind)}


RECYCLE_EDGES = [
    "2024-02-29 10:00:00",  # a leap day
    "2025-02-29 10:00:00",
    "2100-02-29 10:00:00",  # no leap day in 2100
    "2026-04-31 10:00:00",
    "0000-01-01 10:00:00",  # no year 0
    "0001-01-01 00:00:00",
    "9999-12-31 23:59:59",
    "2026-00-10 10:00:00",
    "2026-13-10 10:00:00",
    "2026-01-00 10:00:00",
    "2026-01-10 24:00:00",
    "2026-01-10 23:60:00",
    "2026-01-10 23:59:60",  # a leap second: strptime's pattern takes it, datetime does not
    "2026-01-10 23:59:61",
    "\uff12\uff10\uff12\uff16-01-10 10:00:00",  # fullwidth digits: strptime takes them in the year
    "2026-01-10 \uff11\uff10:00:00",  # but not where its pattern names ASCII digits
    "2026-01-10T10:00:00",  # what fromisoformat would take, the rule does not
    "2026-01-10 10:00:00.5",
]


def test_recycle_time_is_a_real_date_exactly_as_strptime_says(tmp_path):
    rows = rows_valid(len(RECYCLE_EDGES))
    for row, value in zip(rows, RECYCLE_EDGES, strict=True):
        row[HEADER.index("recycleTime")] = value
    path = tmp_path / "f.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows, HEADER))
    report = validate_file(path)
    refused = {p.excerpt for p in report.examples if p.kind == "recycletime_invalid"}
    for value in RECYCLE_EDGES:
        try:
            datetime.strptime(value, "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007
            real = True
        except ValueError:
            real = False
        assert (value not in refused) == real, value


def test_accepted_forms(write):
    rows = rows_valid(4)
    rows[0][1] = "[{'calledNo':1234566}]"  # the official template's own example
    rows[1][1] = (
        '[{"calledNo":"138*#1","delayTime":"0","type":"1"},{"calledNo":"139","delayTime":30}]'
    )
    rows[2][2] = 95555  # a number cell becomes its digits
    report = validate_file(write(rows))
    assert report.is_valid, report.as_json()


def test_header_found_by_name_below_a_title_in_any_order(tmp_path):
    header = ["recycleTime", "called (Mandatory)", "sessionId(非必填)", "notes"]
    rows = [
        ["Outbound list, March"],
        [],
        header,
        ["2026-03-01 10:00:00", '[{"calledNo":"1"}]', "a", "n"],
        [None, None, None, None],
        ["2026-03-01 10:00:00", "", "b", "n"],
    ]
    path = tmp_path / "t.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows[1:], header=rows[0]))
    report = validate_file(path)
    assert report.header_row == 3
    assert report.data_rows == 2
    assert kinds(report) == {(3, "unknown_column"), (6, "called_missing")}


def test_no_header_no_rows_and_not_a_workbook(tmp_path, write):
    assert "no_header" in validate_file(write([["x"]], header=["a", "b"])).counts
    assert "no_data_rows" in validate_file(write([])).counts
    junk = tmp_path / "junk.xlsx"
    junk.write_bytes(b"sessionId,called\n")
    assert "not_xlsx" in validate_file(junk).counts


def test_counts_stay_exact_when_examples_are_capped(write):
    rows = rows_valid(300)
    for row in rows:
        row[5] = "soon"
    report = validate_file(write(rows))
    assert report.counts == {"recycletime_invalid": 300}
    assert len(report.examples) == 20


def test_the_validate_command_exit_codes(tmp_path):
    good, bad, junk = tmp_path / "good.xlsx", tmp_path / "bad.xlsx", tmp_path / "junk.xlsx"
    good.write_bytes(xlsxwriter_bytes(rows_valid(3)))
    rows = rows_valid(3)
    rows[1][1] = "nope"
    bad.write_bytes(xlsxwriter_bytes(rows))
    junk.write_bytes(b"not a workbook")

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "watcher", "validate", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert run(str(good)).returncode == 0
    result = run(str(bad))
    assert result.returncode == 1
    assert "row 3, column called" in result.stdout
    assert run(str(junk)).returncode == 2
    result = run("--json", str(good), str(bad))
    assert result.returncode == 1
    assert [item["valid"] for item in json.loads(result.stdout)] == [True, False]


def test_the_template_command_writes_a_valid_template(tmp_path):
    out = tmp_path / "template.xlsx"
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "template", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    report = validate_file(out)
    assert report.is_valid
    assert report.data_rows == 1


@pytest.mark.parametrize(
    ("options", "errors"),
    [
        ({}, set()),
        ({"duplicate_session_ids_are_errors": True}, {"duplicate_session_id"}),
        ({"duplicate_numbers_are_errors": True}, {"duplicate_called_no"}),
    ],
)
def test_repeats_are_warnings_unless_a_route_says_otherwise(tmp_path, options, errors):
    from watcher.validate import ValidationOptions

    rows = rows_valid(5)
    rows[3][0] = rows[1][0]  # a sessionId again
    rows[4][1] = rows[2][1]  # a number again
    path = tmp_path / "repeats.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows))
    report = validate_file(path, ValidationOptions(**options))
    assert report.counts == {"duplicate_session_id": 1, "duplicate_called_no": 1}
    assert {k for k in report.counts if report.is_error(k)} == errors
    assert report.is_valid == (not errors)
    assert {(p.row, p.kind) for p in report.examples} == {
        (5, "duplicate_session_id"),
        (6, "duplicate_called_no"),
    }


def _command(*args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def test_user_mistakes_get_one_line_and_an_exit_code_never_a_traceback(tmp_path):
    result = _command("validate", str(tmp_path / "missing.xlsx"), str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"isales-watcher: {tmp_path / 'missing.xlsx'}: no such file",
        f"isales-watcher: {tmp_path}: is a folder, not a file",
    ]
    result = _command("template", str(tmp_path / "no-folder" / "t.xlsx"))
    assert (result.returncode, result.stderr.count("\n")) == (73, 1)
    result = _command("template", str(tmp_path / "t.csv"))
    assert result.returncode == 64
    assert "ending in .xlsx" in result.stderr
    out = tmp_path / "t.xlsx"
    assert _command("template", str(out)).returncode == 0
    before = out.read_bytes()
    out.write_bytes(b"mine")
    result = _command("template", str(out))
    assert result.returncode == 73
    assert "--force" in result.stderr
    assert out.read_bytes() == b"mine"  # not overwritten
    assert _command("template", str(out), "--force").returncode == 0
    assert out.read_bytes()[:4] == before[:4] == b"PK\x03\x04"  # a workbook again, not ours
    assert "Traceback" not in result.stderr


def test_a_closed_pipe_ends_a_command_quietly(tmp_path):
    files = []
    for n in range(40):
        path = tmp_path / f"f{n}.xlsx"
        path.write_bytes(xlsxwriter_bytes(rows_valid(2, seed=n)))
        files.append(str(path))
    reader = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    result = _command("validate", *files, stdout=reader.stdin)
    reader.wait(timeout=30)
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_repeat_names_its_value_and_the_row_it_was_first_on(tmp_path, workers):
    from watcher.validate import ValidationOptions

    rows = rows_valid(400)
    rows[299][1] = rows[1][1]  # row 301 calls the number of row 3 (across the halves)
    rows[10][1] = '[{"calledNo":"0138001"}]'  # a leading zero is part of the number
    rows[20][1] = '[{"calledNo":"0138001"},{"calledNo":"0138001"}]'  # twice on one row
    rows[30][1] = rows[40][1] = '[{"calledNo":"12345#"}]'  # not only digits: a hash key
    rows[50][1] = rows[60][1] = f'[{{"calledNo":"{"9" * 24}"}}]'  # too long for a key
    rows[70][0] = rows[5][0]  # a sessionId again
    path = tmp_path / "repeats.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows))
    options = ValidationOptions(workers=workers, split_min_bytes=0)
    report = validate_file(path, options)
    repeats = {
        (p.row, p.excerpt, p.params["first_row"])
        for p in report.examples
        if p.kind == "duplicate_called_no"
    }
    assert repeats == {
        (22, "0138001", 12),
        (42, "", 32),
        (62, "", 52),
        (301, rows[1][1][14:-3], 3),
    }
    assert report.counts["duplicate_called_no"] == 5  # the same row twice counts twice
    [session] = [p for p in report.examples if p.kind == "duplicate_session_id"]
    assert (session.row, session.params) == (72, {"first_row": 7})
    assert "also called on row 3" in next(p.message for p in report.examples if p.row == 301)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_repeat_after_empty_rows_and_rows_without_a_value_names_the_right_rows(
    tmp_path, monkeypatch, workers
):
    from watcher.validate import ValidationOptions

    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)  # pieces in both halves

    rows: list[list[object]] = rows_valid(400)
    for at in (390, 300, 250, 120, 60, 59, 58):
        rows.insert(at, [])  # empty rows: Excel rows with no data row
    for at in (15, 16, 200):
        rows[at][0] = None  # rows with no sessionId
    rows[380][0] = rows[17][0]
    rows[395][1] = rows[14][1]
    path = tmp_path / "gaps.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows))
    report = validate_file(path, ValidationOptions(workers=workers, split_min_bytes=0))
    found = {(p.kind, p.row, p.params["first_row"]) for p in report.examples}
    assert found == {("duplicate_session_id", 382, 19), ("duplicate_called_no", 397, 16)}


def test_the_report_names_the_sheet_and_whether_excel_hides_it(tmp_path):
    import xlsxwriter

    path = tmp_path / "hidden.xlsx"
    book = xlsxwriter.Workbook(str(path))
    calls = book.add_worksheet("Calls")
    book.add_worksheet("Summary").activate()
    calls.hide()
    calls.write_row(0, 0, HEADER)
    for number, row in enumerate(rows_valid(3), start=1):
        calls.write_row(number, 0, row)
    book.close()
    report = validate_file(path)
    assert (report.sheet, report.sheet_hidden, report.other_sheets) == ("Calls", True, ["Summary"])
    assert report.as_json()["sheet_hidden"] is True
    plain = tmp_path / "plain.xlsx"
    plain.write_bytes(xlsxwriter_bytes(rows_valid(3)))
    assert validate_file(plain).sheet_hidden is False


def test_validate_counts_in_grammatical_english(tmp_path):
    one = tmp_path / "one.xlsx"
    assert _command("template", str(one)).returncode == 0  # one example row
    assert _command("validate", str(one)).stdout.strip() == f"{one}: valid, 1 data row"
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(xlsxwriter_bytes([["s1", "not a number", "", "", "", "", ""]]))
    said = _command("validate", str(bad)).stdout.splitlines()[0]
    assert said.startswith(f"{bad}: INVALID, 1 problem in 1 data row"), said
