"""The .result.txt receipt fits one screen, whatever the file got wrong."""

from __future__ import annotations

import json

from watcher.models import FileRecord, FileState, Outcome
from watcher.receipt import receipt_json, receipt_text
from watcher.validate import Report
from watcher.validate.report import KINDS


def record(details: dict, outcome: Outcome = Outcome.rejected) -> FileRecord:
    return FileRecord(
        id="20261123-120000-abcdef",
        route="spring",
        campaign_id="1647",
        inbox="/in",
        name="list.xlsx",
        size_bytes=100,
        mtime=1,
        state=FileState.settling,
        sha256="ab" * 32,
        import_task_id=None,
        outcome=outcome,
        reason="12 problems found in the file",
        details=json.dumps(details),
        created_at="2026-11-23T12:00:00.000+00:00",
        updated_at="2026-11-23T12:00:00.000+00:00",
        submitted_at=None,
        settled_path=None,
    )


def test_a_receipt_with_every_kind_of_problem_fits_one_screen():
    report = Report(data_rows=500, sheet="Sheet1")
    for n, kind in enumerate(KINDS):
        for row in range(40):
            report.add(kind, 10 + n + row, "called", "x" * 80, f"problem {n}")
    text = receipt_text(record({"validation": report.as_json()}))
    lines = text.splitlines()
    assert len(lines) <= 40
    assert max(len(line) for line in lines) <= 240
    errors = sum(40 for kind in KINDS if KINDS[kind].is_error)
    assert lines[0] == (
        f"REJECTED: nothing from this file was imported, because it has {errors} errors."
    )
    assert "row 10, column called: " + "x" * 57 + "..." in text  # the excerpt is cut
    assert "rows 10, 11, 12 and 37 more" in text
    assert f"{len(KINDS) - 6} more kinds of problems are listed in list.xlsx.result.json." in text
    data = receipt_json(record({"validation": report.as_json()}))
    assert data["result"] == "invalid"
    assert data["validation"]["problems"] == dict.fromkeys(report.counts, 40)
    assert len(data["validation"]["examples"]) == 20 * len(report.counts)


def test_errors_come_before_warnings_each_labelled_and_kinds_in_row_order():
    report = Report(data_rows=50, sheet="Calls")
    report.add("duplicate_called_no", 7, "called", "13800138000", "", {"first_row": 3})
    report.add("recycletime_invalid", 30, "recycleTime", "tomorrow", "")
    report.add("calledno_invalid", 12, "called", "12-34", "")
    report.add("calledno_invalid", 19, "called", "12-35", "")
    lines = receipt_text(record({"validation": report.as_json()})).splitlines()
    assert lines[0].endswith("because it has 3 errors.")
    body = [line for line in lines if line.startswith(("Errors", "Warnings", "* "))]
    assert body == [
        "Errors (these must be fixed):",
        "* 'calledNo' has characters other than digits, * and #: rows 12 and 19",
        "* 'recycleTime' is not a real date as yyyy-mm-dd hh:mm:ss: row 30",
        "Warnings (these alone do not stop an import):",
        "* The same phone number appears on several rows: row 7",
    ]
    assert "    row 7: 13800138000, also on row 3" in lines
    one = Report(data_rows=1, sheet="Calls")
    one.add("called_missing", 2, "called", "", "")
    assert receipt_text(record({"validation": one.as_json()})).startswith(
        "REJECTED: nothing from this file was imported, because it has 1 error.\n"
    )


def test_an_imported_receipt_names_the_task_and_counts():
    rec = record(
        {"import": {"succNum": 20, "repeatNum": 1, "failNum": 2, "errMsg": ""}}, Outcome.done
    )
    rec = FileRecord(
        **{**{f: getattr(rec, f) for f in rec.__slots__}, "import_task_id": "T42", "reason": None}
    )
    text = receipt_text(rec)
    assert "IMPORTED" in text
    assert "T42" in text
    assert "Rows: 20 imported, 1 repeated, 2 failed" in text
    assert "2 rows failed inside iSales" in text


def test_a_name_with_control_characters_is_shown_escaped():
    from dataclasses import replace

    odd = replace(record({}), name="list\nRESULT: IMPORTED\x1b[2J.xlsx")
    text = receipt_text(odd)
    assert "File: list\\nRESULT: IMPORTED\\x1b[2J.xlsx" in text.splitlines()
    assert "\x1b" not in text
    assert not any(line.startswith("RESULT: IMPORTED") for line in text.splitlines())


def test_a_partly_imported_failure_says_so():
    failed = record({"import": {"status": "failed", "succNum": 5, "failNum": 3}})
    text = receipt_text(failed)
    assert "iSales counted 5 rows as imported" in text
    assert "nothing was imported" not in text
    assert "drop the file into the inbox again" not in text
    assert "isales-watcher ledger show 20261123-120000-abcdef" in text


def test_receipt_names_fit_the_file_system_and_stay_apart():
    from watcher.settle import fit_name, receipt_paths

    long_a = "a" * 240 + "-north.xlsx"
    long_b = "a" * 240 + "-south.xlsx"
    json_a, text_a = receipt_paths(f"/in/done/{long_a}")
    json_b, _ = receipt_paths(f"/in/done/{long_b}")
    for path in (json_a, text_a, json_b):
        assert len(path.rsplit("/", 1)[1].encode()) <= 255
    assert json_a.endswith(".result.json")
    assert text_a.endswith(".result.txt")
    assert json_a != json_b  # the hash keeps them apart
    chinese = "客户名单" * 30 + ".xlsx"  # 3 bytes a character: cut on a character boundary
    fitted = fit_name(chinese, ".result.json")
    assert len(fitted.encode()) <= 255
    fitted.encode().decode("utf-8")
    assert fit_name("list.xlsx", ".result.json") == "list.xlsx.result.json"


TWIN = {
    "duplicate_of": {
        "name": "march.xlsx",
        "ledger_id": "20261120-090000-aaaaaa",
        "import_task_id": "T-77",
        "received_at": "2026-11-20T09:00:00.000+00:00",
        "same": "rows",
    }
}


def test_a_duplicate_receipt_asks_nothing_to_be_fixed_and_names_the_exact_command():
    text = receipt_text(record(TWIN))
    assert "Nothing needs fixing." in text
    assert "Fix the file" not in text
    assert 'isales-watcher ledger reprocess 20261123-120000-abcdef --reason "why"' in text
    # Sent again on purpose, it is an import like any other: no word of duplicates.
    again = receipt_text(record(TWIN, Outcome.done))
    assert "reprocess" not in again
    assert "imported before" not in again


def test_a_receipt_leaves_out_what_does_not_apply():
    unread = record({"validation": {"data_rows": 0, "problems": {"not_xlsx": 1}, "examples": []}})
    text = receipt_text(
        FileRecord(**{f: getattr(unread, f) for f in FileRecord.__slots__} | {"sha256": None})
    )
    assert "sha256" not in text
    assert "None" not in text
    assert "-..." not in text
