"""The receipts beside a settled file: ``<name>.result.json`` and a one-screen ``.result.txt``."""

from __future__ import annotations

import json
from typing import Any

from watcher.ledger import utc_now
from watcher.models import FileRecord, FileState, Outcome
from watcher.validate import KINDS, Report

__all__ = ("receipt_json", "receipt_text")

_EXAMPLES_PER_KIND = 2
_KINDS_SHOWN = 5


def _details(record: FileRecord) -> dict[str, Any]:
    return dict(json.loads(record.details)) if record.details else {}


def _verdict(record: FileRecord) -> str:
    if record.state is FileState.uncertain:
        return "uncertain"
    return "imported" if record.outcome is Outcome.done else "rejected"


def receipt_json(record: FileRecord) -> dict[str, Any]:
    """Everything a machine needs to know about how the file ended."""
    details = _details(record)
    return {
        "file": record.name,
        "verdict": _verdict(record),
        "reason": record.reason,
        "ledger_id": record.id,
        "route": record.route,
        "campaign_id": record.campaign_id,
        "sha256": record.sha256,
        "size_bytes": record.size_bytes,
        "received_at": record.created_at,
        "settled_at": utc_now(),
        "import_task_id": record.import_task_id,
        **details,
    }


def _import_lines(found: dict[str, Any]) -> list[str]:
    names = (
        ("succNum", "imported"),
        ("repeatNum", "duplicates"),
        ("failNum", "failed"),
        ("blackNum", "blacklisted"),
    )
    counts = ", ".join(
        f"{label} {found[key]}" for key, label in names if found.get(key) is not None
    )
    lines = [f"  Rows: {counts}"] if counts else []
    if found.get("failNum"):
        lines.append("  Some rows failed inside iSales; its console lists them per row.")
    if found.get("errMsg"):
        lines.append(f"  iSales says: {found['errMsg']}")
    return lines


def _problem_lines(report: Report, said: str | None = None) -> list[str]:
    """The problems by kind, with examples; ``said``: the reason given already (not repeated)."""
    lines: list[str] = []
    kinds = sorted(report.counts.items(), key=lambda item: (not KINDS[item[0]].is_error, -item[1]))
    for kind, count in kinds[:_KINDS_SHOWN]:
        info = KINDS[kind]
        examples = [p for p in report.examples if p.kind == kind][:_EXAMPLES_PER_KIND]
        label = "" if info.is_error else " (warning)"
        if examples and all(example.row is None for example in examples):
            # A verdict on the whole file: its own words say more than a count.
            message = examples[0].message
            lines.append(f"* {info.title}{label}" + (f": {message}" if message != said else ""))
            lines.append(f"  Fix: {info.advice}")
            continue
        where = f"{count} row{'s' if count != 1 else ''}" if count else ""
        lines.append(f"* {info.title}{label}: {where}")
        for example in examples:
            place = f"row {example.row}" if example.row else "file"
            column = f", column {example.column}" if example.column else ""
            excerpt = f": {example.excerpt}" if example.excerpt else ""
            lines.append(f"    {place}{column}{excerpt}")
        lines.append(f"  Fix: {info.advice}")
    if len(kinds) > _KINDS_SHOWN:
        lines.append(f"... and {len(kinds) - _KINDS_SHOWN} more kinds; see the .result.json file.")
    return lines


def _outcome_lines(record: FileRecord, details: dict[str, Any]) -> list[str]:
    """The verdict in one sentence, and why."""
    if record.state is FileState.uncertain:
        return [
            "Result: ON HOLD. Whether iSales imported this file is not known yet.",
            f"Why: {record.reason}",
            "An operator will check in iSales. Do not drop the file again meanwhile.",
        ]
    if record.outcome is Outcome.done:
        matched = details.get("reconciliation") or {}
        if matched.get("task_id") == record.import_task_id and record.import_task_id:
            return [f"Result: IMPORTED ({matched['verdict']})."]
        return [f"Result: IMPORTED. iSales import task {record.import_task_id} finished."]
    imported = (details.get("import") or {}).get("succNum")
    if imported:
        return [
            f"Result: FAILED IN iSALES, but iSales counted {imported} rows as imported. Check "
            "the campaign in iSales before sending any of these rows again.",
            f"Why: {record.reason}",
        ]
    return ["Result: REJECTED. Nothing from this file was imported.", f"Why: {record.reason}"]


def _duplicate_lines(record: FileRecord, twin: dict[str, Any]) -> list[str]:
    same = "rows were" if twin.get("same") == "rows" else "content was"
    task = f"import task {twin['import_task_id']}, " if twin.get("import_task_id") else ""
    return [
        f"The same {same} imported before as {twin['name']} (ledger {twin['ledger_id']}, "
        f"{task}{twin['received_at']}). Nothing needs fixing.",
        "To import it again on purpose, ask an operator to run: isales-watcher ledger reprocess "
        f'{record.id} --reason "why"',
    ]


def receipt_text(record: FileRecord) -> str:
    """What the business user reads: the verdict, what was wrong and where, how to fix it."""
    details = _details(record)
    lines = [f"File: {record.shown_name}", f"Campaign: {record.campaign_id} (route {record.route})"]
    lines.extend(_outcome_lines(record, details))
    if "schedule" in details:
        lines.append(f"Scheduled import time: {details['schedule']}")
    if "import" in details:
        lines.extend(_import_lines(details["import"]))
    duplicate = "duplicate_of" in details and record.outcome is Outcome.rejected
    if duplicate:  # (a duplicate sent again on purpose is an import like any other)
        lines.extend(_duplicate_lines(record, details["duplicate_of"]))
    if "validation" in details:
        report = Report.from_json(details["validation"])
        if report.counts and report.is_unreadable and not report.data_rows:
            lines.append("The file could not be read:")
            lines.extend(_problem_lines(report, record.reason))
        elif report.counts:
            sheet = f" on sheet {report.sheet!r}" if report.sheet else ""
            rows = f"{report.data_rows} data row{'s' if report.data_rows != 1 else ''}"
            lines.append(f"Checked {rows}{sheet}:")
            lines.extend(_problem_lines(report))
    if lines[2].startswith("Result: REJECTED") and not duplicate:
        lines.append("Fix the file and drop it into the inbox again.")
    digest = f", sha256 {record.sha256[:16]}..." if record.sha256 else ""
    lines.append(f"(ledger id {record.id}{digest}, received {record.created_at})")
    return "\n".join(lines) + "\n"
