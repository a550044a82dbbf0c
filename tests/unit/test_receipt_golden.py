"""Every kind of receipt, in English and Chinese, against golden files read by a person.

The inputs are fixed (ids, times, counts); the invalid list is a real workbook checked by the
real validator. ``UPDATE_GOLDEN=1`` rewrites the files instead of comparing: read the diff.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import xlsxwriter

from tests.workbooks import HEADER, rows_valid
from watcher.gate import ZipVerdict
from watcher.language import LANGUAGES
from watcher.models import FileRecord, FileState, Outcome
from watcher.pipeline import GATE_REASONS
from watcher.receipt import receipt_json, receipt_text
from watcher.validate import Report, validate_file

GOLDEN = Path(__file__).parent.parent / "golden" / "receipts"
RECEIVED = "2026-11-23T12:00:00.000+00:00"


def base(name: str = "march calls.xlsx", **changes: object) -> FileRecord:
    record = FileRecord(
        id="20261123-120000-a1b2c3",
        route="spring-sale",
        campaign_id="1647000000001",
        inbox="/home/sftp/inbox/spring-sale",
        name=name,
        size_bytes=48_213,
        mtime=1,
        state=FileState.settling,
        sha256="ab" * 32,
        import_task_id=None,
        outcome=Outcome.rejected,
        reason=None,
        details=None,
        created_at=RECEIVED,
        updated_at=RECEIVED,
        submitted_at=None,
        settled_path=None,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def invalid_workbook(path: Path) -> None:
    """A list as a trial user made it: a hidden first sheet, typos, repeats, an extra column."""
    book = xlsxwriter.Workbook(str(path))
    calls = book.add_worksheet("Calls")
    book.add_worksheet("Summary").activate()
    calls.hide()
    calls.write_row(0, 0, [*HEADER, "Remarks"])
    rows = rows_valid(120, seed=7)
    rows[15][1] = '[{"calledNo":"138-0013-8000"}]'  # Excel row 17
    rows[21][1] = '[{"calledNo":"+8613900139000"}]'  # row 23
    for index in range(40, 83):  # rows 42 to 84
        rows[index][5] = "31/12/2026 18:00"
    rows[60][1] = rows[3][1]  # row 62 calls the number of row 5
    rows[90][1] = rows[8][1]  # row 92, row 10
    for number, row in enumerate(rows, start=1):
        calls.write_row(number, 0, [*row, "call after 6pm" if number == 3 else None])
    book.close()


def checked(report: Report) -> str:
    return json.dumps({"validation": report.as_json()})


def cases(tmp_path: Path) -> dict[str, FileRecord]:
    valid = Report(data_rows=120, header_row=1, sheet="Sheet1", rows_fingerprint="f" * 64)
    valid.add("unknown_column", 1, "Remarks", "Remarks", "column 'Remarks' is not in the template")
    invalid_file = tmp_path / "march calls.xlsx"
    invalid_workbook(invalid_file)
    invalid = validate_file(invalid_file)
    not_xlsx = Report()
    not_xlsx.add("not_xlsx", None, None, "", GATE_REASONS[ZipVerdict.not_zip])
    imported = {
        "status": "finished",
        "succNum": 118,
        "repeatNum": 2,
        "failNum": 0,
        "blackNum": 0,
        "errMsg": "",
    }
    return {
        "valid": base(
            outcome=Outcome.done,
            import_task_id="1759301234567",
            data_rows=120,
            details=json.dumps({"validation": valid.as_json(), "import": imported}),
        ),
        "invalid": base(
            reason=f"{invalid.error_count} errors found in the file", details=checked(invalid)
        ),
        "duplicate": base(
            name="march calls (2).xlsx",
            reason="duplicate: the same rows was already imported as march calls.xlsx",
            details=json.dumps(
                {
                    "duplicate_of": {
                        "ledger_id": "20261120-090000-d4e5f6",
                        "name": "march calls.xlsx",
                        "import_task_id": "1759300000001",
                        "received_at": "2026-11-20T09:00:00.000+00:00",
                        "state": "done",
                        "same": "rows",
                    }
                }
            ),
        ),
        "not_xlsx": base(
            name="march calls.xlsx",
            sha256=None,
            reason=GATE_REASONS[ZipVerdict.not_zip],
            details=checked(not_xlsx),
        ),
        "unmatched": base(
            name="list.csv",
            sha256=None,
            reason="the name does not fit the route's pattern *.xlsx",
            details=json.dumps({"unmatched": {"pattern": "*.xlsx"}}),
        ),
        "failed_import": base(
            import_task_id="1759301234568",
            data_rows=120,
            reason="iSales could not import the file: The file format is incorrect.",
            details=json.dumps(
                {
                    "validation": valid.as_json(),
                    "import": {
                        "status": "failed",
                        "succNum": 0,
                        "failNum": 0,
                        "errMsg": "The file format is incorrect.",
                    },
                }
            ),
        ),
        "on_hold": base(
            state=FileState.uncertain,
            outcome=None,
            data_rows=120,
            reason="uploadFileServer may or may not have been accepted (timeout after the "
            "request was sent); no unowned import task began in its time window. It is looked "
            "at again automatically; settle it with 'isales-watcher ledger resolve "
            "20261123-120000-a1b2c3 --imported TASK_ID' or '--not-imported'.",
            details=json.dumps({"validation": valid.as_json()}),
        ),
    }


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_receipt_reads_as_its_golden_file(tmp_path, language):
    texts = {case: receipt_text(record, language) for case, record in cases(tmp_path).items()}
    folder = GOLDEN / language
    if os.environ.get("UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for case, text in texts.items():
            (folder / f"{case}.txt").write_text(text, encoding="utf-8")
    for case, text in texts.items():
        assert text == (folder / f"{case}.txt").read_text(encoding="utf-8"), case
    assert sorted(p.stem for p in folder.iterdir()) == sorted(texts)


RESULTS = {
    "valid": "imported",
    "invalid": "invalid",
    "duplicate": "duplicate",
    "not_xlsx": "unreadable",
    "unmatched": "unmatched",
    "failed_import": "import_failed",
    "on_hold": "on_hold",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_receipts_leave_out_what_does_not_apply_and_machines_get_codes(tmp_path, language):
    for case, record in cases(tmp_path).items():
        text = receipt_text(record, language)
        lines = text.splitlines()
        assert "None" not in text, case
        for line, after in zip(lines, [*lines[1:], ""], strict=True):
            # A line ending in a colon is a section's label, with its first entry below.
            label = line.endswith((":", "\uff1a"))  # a colon, or a full-width one
            assert not label or after.startswith("* "), (case, line)
            assert not line.endswith((" -", ": -")), (case, line)
        assert "sha256" not in text.lower(), case
        assert len(lines) <= 30, case
        assert lines[1].startswith(("What to do: ", "下一步\uff1a")), case  # the one action
        data = receipt_json(record, language)
        assert data["result"] == RESULTS[case]
        assert data["receipt_language"] == language
        assert data["file"] == record.name
        assert data["ledger_id"] == record.id
