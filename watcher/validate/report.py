"""What validation found: counts per kind of problem, and capped examples with Excel rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from watcher.validate.xlsx import Limits

__all__ = ("KINDS", "UNREADABLE_KINDS", "Kind", "Problem", "Report", "ValidationOptions")


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of problem: how bad it is, and what the person who made the file should do."""

    is_error: bool
    title: str
    advice: str


KINDS: dict[str, Kind] = {
    "unreadable": Kind(
        True,
        "The file cannot be read as an Excel workbook",
        "Open it in Excel and save it again as 'Excel Workbook (*.xlsx)'.",
    ),
    "no_header": Kind(
        True,
        "No header row with a 'called' column",
        "The first sheet needs a header row naming called and the other template "
        "columns (sessionId, caller, callData, customField, recycleTime). Start from "
        "the template: isales-watcher template OUT.xlsx",
    ),
    "no_data_rows": Kind(
        True,
        "The list has no data rows",
        "Put the customers below the header row, on the first sheet.",
    ),
    "too_many_rows": Kind(
        True,
        "More than 500,000 data rows",
        "iSales imports at most 500,000 records per file: split the list.",
    ),
    "called_missing": Kind(
        True,
        "'called' is empty",
        'Every row needs at least one number, e.g. [{"calledNo":"13800138000"}].',
    ),
    "called_not_json": Kind(
        True,
        "'called' is not a list of numbers in JSON",
        'Write it as [{"calledNo":"13800138000"}]; several numbers as '
        '[{"calledNo":"138..."},{"calledNo":"139...","delayTime":"30"}].',
    ),
    "calledno_missing": Kind(
        True,
        "A number object has no 'calledNo'",
        'Each object in called needs "calledNo", e.g. {"calledNo":"13800138000"}.',
    ),
    "calledno_invalid": Kind(
        True,
        "'calledNo' has characters other than digits, * and #",
        "Remove spaces, dashes, brackets and '+'; write only digits, * or #.",
    ),
    "calledno_too_long": Kind(
        True,
        "'calledNo' is longer than 24 characters",
        "A called number has at most 24 characters.",
    ),
    "number_corrupted": Kind(
        True,
        "A long number was stored as an Excel number and lost digits",
        "Excel keeps only 15 digits of a number. Format the column as Text "
        "and type the numbers again (or write them inside the JSON text).",
    ),
    "delaytime_invalid": Kind(
        True,
        "'delayTime' is not a whole number of seconds from 0 to 7200",
        'Write delayTime as a number of seconds, e.g. "delayTime":"30".',
    ),
    "sessionid_too_long": Kind(
        True,
        "'sessionId' is longer than 32 characters",
        "Shorten sessionId to at most 32 characters.",
    ),
    "caller_too_long": Kind(
        True, "'caller' is longer than 24 characters", "Shorten caller to at most 24 characters."
    ),
    "customfield_too_long": Kind(
        True,
        "'customField' is longer than 200 characters",
        "Shorten customField to at most 200 characters.",
    ),
    "calldata_too_long": Kind(
        True,
        "'callData' is longer than 1024 characters",
        "Shorten callData to at most 1024 characters.",
    ),
    "calldata_not_json": Kind(
        True,
        "'callData' is not JSON (this campaign's IVR needs JSON)",
        'Write callData as a JSON object, e.g. {"name":"Li","amount":"30"}.',
    ),
    "recycletime_invalid": Kind(
        True,
        "'recycleTime' is not a real date as yyyy-mm-dd hh:mm:ss",
        "Write it like 2026-03-01 18:00:00, or use an Excel date cell.",
    ),
    "priority_invalid": Kind(
        True,
        "'priority' is not a whole number from 1 to 5",
        "Leave priority empty or write 1, 2, 3, 4 or 5.",
    ),
    "not_xlsx": Kind(
        True,
        "The file is not an .xlsx workbook",
        "Save the list from Excel as 'Excel Workbook (*.xlsx)'.",
    ),
    "old_xls": Kind(
        True,
        "The file is an old Excel 97-2003 .xls",
        "Open it in Excel and save it as 'Excel Workbook (*.xlsx)'.",
    ),
    "encrypted": Kind(
        True,
        "The workbook is protected with a password",
        "Remove the password (File > Info > Protect Workbook) and save again.",
    ),
    "macros": Kind(
        True,
        "The workbook contains macros",
        "Save it as 'Excel Workbook (*.xlsx)', which drops the macros.",
    ),
    "external_links": Kind(
        True,
        "The workbook links to other workbooks",
        "Break the links (Data > Edit Links > Break Link) and save again.",
    ),
    "too_large": Kind(
        True,
        "The workbook is too large when unpacked",
        "Send the list as a plain .xlsx of at most 500,000 rows.",
    ),
    "xml_dtd": Kind(
        True,
        "The workbook contains XML that Excel never writes",
        "Open the list in Excel and save it again as .xlsx.",
    ),
    "cell_too_long": Kind(
        True,
        "A cell holds more text than Excel allows",
        "Check the file came from Excel; cells hold at most 32,767 characters.",
    ),
    "duplicate_header": Kind(
        True,
        "A template column appears twice in the header",
        "Keep one column per name; delete or rename the other.",
    ),
    "duplicate_session_id": Kind(
        False,
        "The same sessionId appears on several rows",
        "Give every row its own sessionId, or leave it empty.",
    ),
    "duplicate_called_no": Kind(
        False,
        "The same phone number appears on several rows",
        "Remove the repeated numbers; iSales would count them as repeats.",
    ),
    "unsafe_zip": Kind(
        True,
        "The file's ZIP structure is unsafe",
        "The file was not written by Excel as it is. Open it in Excel and save it again as "
        "'Excel Workbook (*.xlsx)'.",
    ),
    "check_failed": Kind(
        True,
        "The file could not be checked",
        "Split the list into smaller files. If a small file fails so too, ask an operator to "
        "look at the daemon's log.",
    ),
    "unknown_column": Kind(
        False,
        "A column is not part of the template; it is ignored",
        "Remove the column, or check the spelling of its header.",
    ),
}


UNREADABLE_KINDS = frozenset(
    {
        "check_failed",
        "unreadable",
        "not_xlsx",
        "old_xls",
        "encrypted",
        "too_large",
        "xml_dtd",
        "cell_too_long",
    }
)


@dataclass(frozen=True, slots=True)
class ValidationOptions:
    """Per-route choices."""

    call_data_json: bool = False
    duplicate_session_ids_are_errors: bool = False
    duplicate_numbers_are_errors: bool = False
    workers: int = 2  # processes for one big file (a fork shares the strings table)
    split_min_bytes: int = 32 << 20  # below this much sheet XML, a second process costs more
    examples_per_kind: int = 20
    limits: Limits = field(default_factory=Limits)

    @property
    def promoted_kinds(self) -> frozenset[str]:
        """Warnings this route treats as errors."""
        promoted = set()
        if self.duplicate_session_ids_are_errors:
            promoted.add("duplicate_session_id")
        if self.duplicate_numbers_are_errors:
            promoted.add("duplicate_called_no")
        return frozenset(promoted)


_MAX_MESSAGE = 400


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem, where a person can find it in Excel."""

    kind: str
    row: int | None  # the Excel row number
    column: str | None
    excerpt: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "row": self.row,
            "column": self.column,
            "excerpt": self.excerpt,
            "message": self.message,
        }


@dataclass(slots=True)
class Report:
    """The verdict on one file. Counts are exact; examples are capped.

    ``rows_fingerprint`` names the list rather than the bytes (see
    :mod:`watcher.validate.fingerprint`): the same rows give the same fingerprint whatever wrote
    them, in whatever column or row order. None when the rows were not all read: an unreadable
    file, no header, or more rows than iSales imports.
    """

    data_rows: int = 0
    header_row: int | None = None
    sheet: str | None = None
    rows_fingerprint: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[Problem] = field(default_factory=list)
    examples_per_kind: int = 20
    promoted: frozenset[str] = frozenset()

    def add(
        self, kind: str, row: int | None, column: str | None, excerpt: str, message: str
    ) -> None:
        count = self.counts[kind] = self.counts.get(kind, 0) + 1
        if count <= self.examples_per_kind:
            # Both may quote the file (a part's name, a cell): a 40 MB name must not become a
            # 40 MB receipt, ledger row and log line.
            cut = excerpt if len(excerpt) <= 60 else excerpt[:57] + "..."
            said = message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."
            self.examples.append(Problem(kind, row, column, cut, said))

    def merge(self, other: Report) -> None:
        """Add the findings of a later part of the same sheet (the fingerprint is set after)."""
        self.data_rows += other.data_rows
        kept = {kind: min(count, self.examples_per_kind) for kind, count in self.counts.items()}
        for example in other.examples:
            if kept.get(example.kind, 0) < self.examples_per_kind:
                kept[example.kind] = kept.get(example.kind, 0) + 1
                self.examples.append(example)
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count

    @property
    def is_valid(self) -> bool:
        return not any(self.is_error(kind) for kind in self.counts)

    def is_error(self, kind: str) -> bool:
        return KINDS[kind].is_error or kind in self.promoted

    @property
    def is_unreadable(self) -> bool:
        """The file could not be read at all (as opposed to: read, and found wanting)."""
        return not UNREADABLE_KINDS.isdisjoint(self.counts)

    @property
    def error_count(self) -> int:
        return sum(n for kind, n in self.counts.items() if self.is_error(kind))

    def as_json(self) -> dict[str, Any]:
        examples = self.examples
        return {
            "valid": self.is_valid,
            "errors": self.error_count,
            "sheet": self.sheet,
            "header_row": self.header_row,
            "data_rows": self.data_rows,
            "rows_fingerprint": self.rows_fingerprint,
            "problems": dict(sorted(self.counts.items())),
            "examples": [p.as_json() for p in examples],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        report = cls(
            data_rows=data.get("data_rows", 0),
            header_row=data.get("header_row"),
            sheet=data.get("sheet"),
            rows_fingerprint=data.get("rows_fingerprint"),
            counts=dict(data.get("problems", {})),
        )
        report.examples = [Problem(**p) for p in data.get("examples", [])]
        return report
