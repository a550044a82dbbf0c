"""The receipts beside a settled file: ``<name>.result.json`` and a one-screen ``.result.txt``.

The JSON receipt is for machines: English keys, and ``result`` names the case with a stable code.
The text receipt is for the person who dropped the file, in the route's ``receipt_language``: it
opens with one sentence of outcome and the one thing to do, then the details. Every sentence is a
message of the catalog (:mod:`watcher.language`), filled in from codes and numbers, never an
English sentence translated after the fact. What does not apply is left out.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from gettext import NullTranslations
from typing import Any

from watcher.language import Language, translator
from watcher.ledger import utc_now
from watcher.models import FileRecord, FileState, Outcome, escaped
from watcher.receipt.problems import join, problem_lines, sheet_lines
from watcher.validate import KINDS, Report

__all__ = ("RESULTS", "receipt_json", "receipt_text", "result_of")

# The cases a receipt tells apart, as the JSON receipt's ``result`` names them.
RESULTS = (
    "imported",
    "on_hold",
    "import_failed",
    "refused",
    "duplicate",
    "unmatched",
    "unreadable",
    "invalid",
    "rejected",
)
# Whole-file verdicts whose advice is not "fix it and drop it again".
_NO_DROP_AGAIN = frozenset({"truncated", "check_failed"})
# Whole-file verdicts whose own words say more than their title (a limit, a damaged part).
_DETAILED = frozenset({"unreadable", "check_failed", "too_large", "unsafe_zip", "cell_too_long"})
# Ends decided before or without the rows being read: no sheet, no problems to list.
_NOT_CHECKED = frozenset({"duplicate", "unmatched", "unreadable"})


def _details(record: FileRecord) -> dict[str, Any]:
    return dict(json.loads(record.details)) if record.details else {}


def _report(details: dict[str, Any]) -> Report | None:
    return Report.from_json(details["validation"]) if "validation" in details else None


def _verdict(record: FileRecord) -> str:
    if record.state is FileState.uncertain:
        return "uncertain"
    return "imported" if record.outcome is Outcome.done else "rejected"


def result_of(record: FileRecord, details: dict[str, Any] | None = None) -> str:
    """Which of :data:`RESULTS` the file's end is."""
    details = _details(record) if details is None else details
    if record.state is FileState.uncertain:
        return "on_hold"
    if record.outcome is Outcome.done:
        return "imported"
    # In the order things happen: a duplicate sent again on purpose may still fail in iSales.
    for key, result in (
        ("import", "import_failed"),
        ("refused", "refused"),
        ("duplicate_of", "duplicate"),
        ("unmatched", "unmatched"),
    ):
        if key in details:
            return result
    report = _report(details)
    if report is not None and not report.is_valid:
        return "unreadable" if report.is_unreadable and not report.data_rows else "invalid"
    return "rejected"


def receipt_json(record: FileRecord, language: Language = "en") -> dict[str, Any]:
    """Everything a machine needs to know about how the file ended."""
    details = _details(record)
    return {
        "file": record.name,
        "verdict": _verdict(record),
        "result": result_of(record, details),
        "reason": record.reason,
        "ledger_id": record.id,
        "route": record.route,
        "campaign_id": record.campaign_id,
        "sha256": record.sha256,
        "size_bytes": record.size_bytes,
        "received_at": record.created_at,
        "settled_at": utc_now(),
        "import_task_id": record.import_task_id,
        "receipt_language": language,
        **details,
    }


def _when(iso: str) -> str:
    """A ledger time as people read it: ``2026-11-23 12:00:00 UTC``."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return escaped(iso)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Receipt:
    """The text receipt of one record, in one language: an opening of two lines (the outcome,
    and what to do), the facts, the problems found, and where to find the file in the ledger."""

    def __init__(self, record: FileRecord, t: NullTranslations) -> None:
        self.record = record
        self.t = t
        self.details = _details(record)
        self.report = _report(self.details)
        self.result = result_of(record, self.details)

    def _to_do(self, action: str) -> str:
        return self.t.gettext("What to do: {action}").format(action=action)

    def _ask_operator(self, template: str) -> str:
        """An action that names the exact command an operator runs for this file."""
        return self._to_do(template.format(command=f"isales-watcher ledger show {self.record.id}"))

    def _operator_detail(self, detail: str) -> list[str]:
        if not detail:
            return []
        return [self.t.gettext("Details for the operator: {detail}").format(detail=escaped(detail))]

    # -- the opening: the outcome, and the one thing to do -----------------------------------------

    def opening(self) -> list[str]:
        says = {
            "imported": self._imported,
            "on_hold": self._on_hold,
            "import_failed": self._import_failed,
            "refused": self._refused,
            "duplicate": self._duplicate,
            "unmatched": self._unmatched,
            "unreadable": self._unreadable,
            "invalid": self._invalid,
            "rejected": self._rejected,
        }
        return says[self.result]()

    def _imported(self) -> list[str]:
        t, record = self.t, self.record
        outcome = t.gettext(
            "IMPORTED: iSales imported this list into campaign {campaign} (import task {task})."
        ).format(campaign=record.campaign_id, task=record.import_task_id or "")
        failed = (self.details.get("import") or {}).get("failNum")
        if not failed:
            return [outcome, self._to_do(t.gettext("Nothing."))]
        return [
            outcome,
            self._to_do(
                t.ngettext(
                    "Nothing for the imported rows; {count} row failed inside iSales, and the "
                    "iSales console lists it.",
                    "Nothing for the imported rows; {count} rows failed inside iSales, and the "
                    "iSales console lists them.",
                    failed,
                ).format(count=failed)
            ),
        ]

    def _on_hold(self) -> list[str]:
        t, record = self.t, self.record
        task = record.import_task_id or "TASK_ID"
        command = f'isales-watcher ledger resolve {record.id} --imported {task} --reason "..."'
        return [
            t.gettext("ON HOLD: it is not known yet whether iSales imported this file."),
            self._to_do(
                t.gettext(
                    "Do not drop the file again. The service keeps checking by itself; if it "
                    "cannot tell, an operator settles it with: {command} (or --not-imported)"
                ).format(command=command)
            ),
        ]

    def _import_failed(self) -> list[str]:
        t, task = self.t, self.record.import_task_id or ""
        imported = (self.details.get("import") or {}).get("succNum")
        if imported:
            return [
                t.ngettext(
                    "FAILED IN iSALES, but iSales counted {count} row as imported "
                    "(import task {task}).",
                    "FAILED IN iSALES, but iSales counted {count} rows as imported "
                    "(import task {task}).",
                    imported,
                ).format(count=imported, task=task),
                self._ask_operator(
                    t.gettext(
                        "Check the campaign in iSales before sending any of these rows again; "
                        "an operator can help with: {command}"
                    )
                ),
            ]
        return [
            t.gettext(
                "FAILED IN iSALES: iSales could not import this file (import task {task}); "
                "nothing was imported."
            ).format(task=task),
            self._ask_operator(
                t.gettext(
                    "Fix what iSales names below and drop the file into the inbox again; if it "
                    "is not clear, ask an operator to run: {command}"
                )
            ),
        ]

    def _refused(self) -> list[str]:
        t = self.t
        return [
            t.gettext(
                "REJECTED BY iSALES: iSales refused to import this file; nothing was imported."
            ),
            self._ask_operator(
                t.gettext(
                    "Ask an operator to check the campaign and the route in iSales: {command}"
                )
            ),
        ]

    def _duplicate(self) -> list[str]:
        t, record = self.t, self.record
        twin = self.details["duplicate_of"]
        name, task = escaped(str(twin.get("name", ""))), twin.get("import_task_id")
        when = _when(str(twin.get("received_at", "")))
        earlier = (
            t.gettext("import task {task}, received {when}").format(task=task, when=when)
            if task
            else t.gettext("received {when}").format(when=when)
        )
        same = (
            t.gettext(
                "NOT IMPORTED: this list is a duplicate. The same rows were imported before as "
                "{name} ({earlier})."
            )
            if twin.get("same") == "rows"
            else t.gettext(
                "NOT IMPORTED: this list is a duplicate. The same file was imported before as "
                "{name} ({earlier})."
            )
        )
        command = f'isales-watcher ledger reprocess {record.id} --reason "why"'
        return [
            same.format(name=name, earlier=earlier),
            self._to_do(
                t.gettext(
                    "Nothing needs fixing. To import it a second time on purpose, ask an "
                    "operator to run: {command}"
                ).format(command=command)
            ),
        ]

    def _unmatched(self) -> list[str]:
        t = self.t
        pattern = escaped(str(self.details["unmatched"].get("pattern", "")))
        return [
            t.gettext(
                "NOT TAKEN: this folder takes only files named {pattern}; this file's name does "
                "not fit, so nothing was imported."
            ).format(pattern=pattern),
            self._to_do(
                t.gettext(
                    "Save the list from Excel as 'Excel Workbook (*.xlsx)' with a name that "
                    "fits {pattern}, then drop it into the inbox again."
                ).format(pattern=pattern)
            ),
        ]

    def _verdict_kind(self) -> str:
        """The kind of a verdict on the whole file (an unreadable one)."""
        assert self.report is not None
        return next(kind for kind in self.report.counts if self.report.is_error(kind))

    def _unreadable(self) -> list[str]:
        t = self.t
        kind = self._verdict_kind()
        info = KINDS[kind]
        advice = t.gettext(info.advice)
        if kind not in _NO_DROP_AGAIN:
            advice = t.gettext("{advice} Then drop it into the inbox again.").format(advice=advice)
        return [
            t.gettext("REJECTED: nothing from this file was imported. {problem}.").format(
                problem=t.gettext(info.title)
            ),
            self._to_do(advice),
        ]

    def _invalid(self) -> list[str]:
        t = self.t
        assert self.report is not None
        errors = self.report.error_count
        return [
            t.ngettext(
                "REJECTED: nothing from this file was imported, because it has {count} error.",
                "REJECTED: nothing from this file was imported, because it has {count} errors.",
                errors,
            ).format(count=errors),
            self._to_do(
                t.gettext(
                    "Fix the rows listed under Errors, then drop the file into the inbox again."
                )
            ),
        ]

    def _rejected(self) -> list[str]:
        t = self.t
        return [
            t.gettext("REJECTED: nothing from this file was imported."),
            self._ask_operator(
                t.gettext(
                    "If the details below do not say what to change, ask an operator to run: "
                    "{command}"
                )
            ),
        ]

    # -- the facts --------------------------------------------------------------------------------

    def facts(self) -> list[str]:
        """What is known of the file: its name, its import, why it stopped, the sheet checked."""
        lines = [self.t.gettext("File: {name}").format(name=self.record.shown_name)]
        lines.extend(self._schedule())
        lines.extend(self._import())
        lines.extend(self._why())
        if self.report is not None and self.result not in _NOT_CHECKED:
            lines.extend(sheet_lines(self.t, self.report))
        return lines

    def _schedule(self) -> list[str]:
        t, details = self.t, self.details
        if "schedule" not in details:
            return []
        time, zone = details.get("schedule_time"), details.get("schedule_zone")
        if time and zone:
            said = (
                t.gettext("{time} server time ({zone}, assumed)")
                if details.get("schedule_zone_assumed")
                else t.gettext("{time} server time ({zone})")
            ).format(time=time, zone=zone)
        else:  # a row written before the parts were kept
            said = escaped(str(details["schedule"]))
        return [t.gettext("Scheduled import time: {time}").format(time=said)]

    def _import(self) -> list[str]:
        t, found = self.t, self.details.get("import") or {}
        lines = []
        if self.result == "imported" or found.get("succNum"):
            counts = [t.gettext("{count} imported").format(count=found.get("succNum") or 0)]
            counts.extend(
                label.format(count=found[key])
                for key, label in (
                    ("repeatNum", t.gettext("{count} repeated")),
                    ("failNum", t.gettext("{count} failed")),
                    ("blackNum", t.gettext("{count} blocklisted")),
                )
                if found.get(key)
            )
            lines.append(t.gettext("Rows: {counts}").format(counts=join(t, counts, last_and=False)))
        if found.get("errMsg"):
            lines.append(
                t.gettext("iSales says: {message}").format(message=escaped(str(found["errMsg"])))
            )
        matched = self.details.get("reconciliation") or {}
        task = self.record.import_task_id
        if self.result == "imported" and task and matched.get("task_id") == task:
            lines.append(self._matched(matched))
        return lines

    def _matched(self, matched: dict[str, Any]) -> str:
        records, rows = matched.get("records"), self.record.data_rows
        task, begun = matched["task_id"], matched.get("begin_time")
        if records is not None and rows is not None:
            return self.t.gettext(
                "Matched after a lost answer: task {task}, begun at {begun}, "
                "{records} records = {rows} rows."
            ).format(task=task, begun=begun, records=records, rows=rows)
        return self.t.gettext("Matched after a lost answer: task {task}, begun at {begun}.").format(
            task=task, begun=begun
        )

    def _why(self) -> list[str]:
        """The technical reason, where the dropper or an operator may need its words."""
        if self.result in ("on_hold", "rejected"):
            return self._operator_detail(self.record.reason or "")
        if self.result == "refused":
            refused = self.details.get("refused") or {}
            message = str(refused.get("message") or self.record.reason or "")
            return [self.t.gettext("iSales answered: {message}").format(message=escaped(message))]
        if self.result == "unreadable" and self._verdict_kind() in _DETAILED:
            assert self.report is not None
            said = next((p.message for p in self.report.examples if p.row is None), "")
            return self._operator_detail(said)
        return []

    # -- the problems, and the ledger -------------------------------------------------------------

    def problems(self) -> list[str]:
        if self.report is None or self.result in _NOT_CHECKED:
            return []
        return problem_lines(self.t, self.report, self.record.name)

    def footer(self, name_shortened: bool) -> list[str]:
        t, record = self.t, self.record
        lines = [
            t.gettext(
                "Campaign {campaign}, route {route}. Received {when}. Ledger id {id}."
            ).format(
                campaign=record.campaign_id,
                route=record.route,
                when=_when(record.created_at),
                id=record.id,
            )
        ]
        if name_shortened:
            lines.append(
                t.gettext(
                    "The file's name is too long for a receipt name; this receipt's name is cut."
                )
            )
        return lines


def receipt_text(
    record: FileRecord, language: Language = "en", *, name_shortened: bool = False
) -> str:
    """What the person who dropped the file reads: the outcome and what to do, then the details.

    Args:
        record: the file's ledger row.
        language: the route's ``receipt_language``.
        name_shortened: the receipt's file name had to be cut (a very long file name).
    """
    receipt = _Receipt(record, translator(language))
    parts = [receipt.opening(), receipt.facts(), receipt.problems(), receipt.footer(name_shortened)]
    return "\n\n".join("\n".join(part) for part in parts if part) + "\n"
