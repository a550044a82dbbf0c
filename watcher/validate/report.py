"""What validation found: counts per kind of problem, and capped examples with Excel rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from watcher.language import N_

__all__ = ("KINDS", "UNREADABLE_KINDS", "Kind", "Problem", "Report", "ValidationOptions")


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of problem: how bad it is, and what the person who made the file should do.

    ``title`` and ``advice`` are English and marked for the catalog: receipts translate them.
    """

    is_error: bool
    title: str
    advice: str


KINDS: dict[str, Kind] = {
    "unreadable": Kind(
        True,
        N_("The file cannot be read as an Excel workbook"),
        N_("Open it in Excel and save it again as 'Excel Workbook (*.xlsx)'."),
    ),
    "truncated": Kind(
        True,
        N_("The file is incomplete: its end is missing (an interrupted upload?)"),
        N_("Upload the file again, whole."),
    ),
    "no_header": Kind(
        True,
        N_("No header row with a 'called' column"),
        N_(
            "The first sheet needs a header row naming called and the other template columns "
            "(sessionId, caller, callData, customField, recycleTime). Start from the "
            "template: isales-watcher template OUT.xlsx"
        ),
    ),
    "no_data_rows": Kind(
        True,
        N_("The list has no data rows"),
        N_("Put the customers below the header row, on the first sheet."),
    ),
    "too_many_rows": Kind(
        True,
        N_("More than 500,000 data rows"),
        N_("iSales imports at most 500,000 records per file: split the list."),
    ),
    "called_missing": Kind(
        True,
        N_("'called' is empty"),
        N_('Every row needs at least one number, e.g. [{"calledNo":"13800138000"}].'),
    ),
    "called_not_json": Kind(
        True,
        N_("'called' is not a list of numbers in JSON"),
        N_(
            'Write it as [{"calledNo":"13800138000"}]; several numbers as '
            '[{"calledNo":"138..."},{"calledNo":"139...","delayTime":"30"}].'
        ),
    ),
    "calledno_missing": Kind(
        True,
        N_("A number object has no 'calledNo'"),
        N_('Each object in called needs "calledNo", e.g. {"calledNo":"13800138000"}.'),
    ),
    "calledno_invalid": Kind(
        True,
        N_("'calledNo' has characters other than digits, * and #"),
        N_("Remove spaces, dashes, brackets and '+'; write only digits, * or #."),
    ),
    "calledno_too_long": Kind(
        True,
        N_("'calledNo' is longer than 24 characters"),
        N_("A called number has at most 24 characters."),
    ),
    "number_corrupted": Kind(
        True,
        N_("A long number was stored as an Excel number and lost digits"),
        N_(
            "Excel keeps only 15 digits of a number. Format the column as Text and type the "
            "numbers again (or write them inside the JSON text)."
        ),
    ),
    "delaytime_invalid": Kind(
        True,
        N_("'delayTime' is not a whole number of seconds from 0 to 7200"),
        N_('Write delayTime as a number of seconds, e.g. "delayTime":"30".'),
    ),
    "sessionid_too_long": Kind(
        True,
        N_("'sessionId' is longer than 32 characters"),
        N_("Shorten sessionId to at most 32 characters."),
    ),
    "caller_too_long": Kind(
        True,
        N_("'caller' is longer than 24 characters"),
        N_("Shorten caller to at most 24 characters."),
    ),
    "customfield_too_long": Kind(
        True,
        N_("'customField' is longer than 200 characters"),
        N_("Shorten customField to at most 200 characters."),
    ),
    "calldata_too_long": Kind(
        True,
        N_("'callData' is longer than 1024 characters"),
        N_("Shorten callData to at most 1024 characters."),
    ),
    "calldata_not_json": Kind(
        True,
        N_("'callData' is not JSON (this campaign's IVR needs JSON)"),
        N_('Write callData as a JSON object, e.g. {"name":"Li","amount":"30"}.'),
    ),
    "recycletime_invalid": Kind(
        True,
        N_("'recycleTime' is not a real date as yyyy-mm-dd hh:mm:ss"),
        N_("Write it like 2026-03-01 18:00:00, or use an Excel date cell."),
    ),
    "priority_invalid": Kind(
        True,
        N_("'priority' is not a whole number from 1 to 5"),
        N_("Leave priority empty or write 1, 2, 3, 4 or 5."),
    ),
    "not_xlsx": Kind(
        True,
        N_("The file is not an .xlsx workbook"),
        N_("Save the list from Excel as 'Excel Workbook (*.xlsx)'."),
    ),
    "old_xls": Kind(
        True,
        N_("The file is an old Excel 97-2003 .xls"),
        N_("Open it in Excel and save it as 'Excel Workbook (*.xlsx)'."),
    ),
    "encrypted": Kind(
        True,
        N_("The workbook is protected with a password"),
        N_("Remove the password (File > Info > Protect Workbook) and save again."),
    ),
    "macros": Kind(
        True,
        N_("The workbook contains macros"),
        N_("Save it as 'Excel Workbook (*.xlsx)', which drops the macros."),
    ),
    "external_links": Kind(
        True,
        N_("The workbook links to other workbooks"),
        N_("Break the links (Data > Edit Links > Break Link) and save again."),
    ),
    "too_large": Kind(
        True,
        N_("The workbook is too large when unpacked"),
        N_("Send the list as a plain .xlsx of at most 500,000 rows."),
    ),
    "xml_dtd": Kind(
        True,
        N_("The workbook contains XML that Excel never writes"),
        N_("Open the list in Excel and save it again as .xlsx."),
    ),
    "cell_too_long": Kind(
        True,
        N_("A cell holds more text than Excel allows"),
        N_("Check the file came from Excel; cells hold at most 32,767 characters."),
    ),
    "duplicate_header": Kind(
        True,
        N_("A template column appears twice in the header"),
        N_("Keep one column per name; delete or rename the other."),
    ),
    "duplicate_session_id": Kind(
        False,
        N_("The same sessionId appears on several rows"),
        N_("Give every row its own sessionId, or leave it empty."),
    ),
    "duplicate_called_no": Kind(
        False,
        N_("The same phone number appears on several rows"),
        N_("Remove the repeated numbers; iSales would count them as repeats."),
    ),
    "unsafe_zip": Kind(
        True,
        N_("The file's ZIP structure is unsafe"),
        N_(
            "The file was not written by Excel as it is. Open it in Excel and save it again "
            "as 'Excel Workbook (*.xlsx)'."
        ),
    ),
    "check_failed": Kind(
        True,
        N_("The file could not be checked"),
        N_(
            "Split the list into smaller files. If a small file fails so too, ask an operator "
            "to look at the daemon's log."
        ),
    ),
    "unknown_column": Kind(
        False,
        N_("A column is not part of the template; it is ignored"),
        N_("Remove the column, or check the spelling of its header."),
    ),
}


UNREADABLE_KINDS = frozenset(
    {
        "check_failed",
        "unreadable",
        "truncated",
        "not_xlsx",
        "old_xls",
        "encrypted",
        "too_large",
        "xml_dtd",
        "cell_too_long",
    }
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep a hostile file from exhausting memory or time."""

    max_uncompressed_bytes: int = 2_000_000_000
    max_ratio: float = 200.0  # uncompressed / compressed, for members above 1 MB
    max_cell_chars: int = 32_767  # what Excel itself allows in a cell
    max_row_bytes: int = 8_000_000


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
    """One problem, where a person can find it in Excel.

    ``message`` is English, for logs and the ``validate`` command; receipts are written from
    ``kind`` and ``params`` (``first_row``: where a repeated value was seen first).
    """

    kind: str
    row: int | None  # the Excel row number
    column: str | None
    excerpt: str
    message: str
    params: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "row": self.row,
            "column": self.column,
            "excerpt": self.excerpt,
            "message": self.message,
            "params": self.params,
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
    sheet_hidden: bool = False  # the first sheet, the one checked, is hidden in Excel
    other_sheets: list[str] = field(default_factory=list)
    rows_fingerprint: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[Problem] = field(default_factory=list)
    examples_per_kind: int = 20
    promoted: frozenset[str] = frozenset()

    def add(
        self,
        kind: str,
        row: int | None,
        column: str | None,
        excerpt: str,
        message: str,
        params: dict[str, Any] | None = None,
    ) -> None:
        count = self.counts[kind] = self.counts.get(kind, 0) + 1
        if count <= self.examples_per_kind:
            # Both may quote the file (a part's name, a cell): a 40 MB name must not become a
            # 40 MB receipt, ledger row and log line.
            cut = excerpt if len(excerpt) <= 60 else excerpt[:57] + "..."
            said = message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."
            self.examples.append(Problem(kind, row, column, cut, said, params or {}))

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
            "sheet_hidden": self.sheet_hidden,
            "other_sheets": self.other_sheets,
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
            sheet_hidden=data.get("sheet_hidden", False),
            other_sheets=list(data.get("other_sheets", [])),
            rows_fingerprint=data.get("rows_fingerprint"),
            counts=dict(data.get("problems", {})),
        )
        report.examples = [Problem(**p) for p in data.get("examples", [])]
        return report
