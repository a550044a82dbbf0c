"""The template's rules for one data row. Pure functions over cell values; no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from watcher.validate.report import Report

__all__ = ("TEMPLATE_COLUMNS", "RowChecker", "cell_text", "column_of")

TEMPLATE_COLUMNS = (
    "sessionId",
    "called",
    "caller",
    "callData",
    "customField",
    "recycleTime",
    "priority",
)
_BY_FOLDED = {name.casefold(): name for name in TEMPLATE_COLUMNS}
_HEADER_NAME = re.compile(r"^\s*([A-Za-z]+)")
_CALLED_NO = re.compile(r"^[0-9*#]+$")
_RECYCLE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
# The canonical form most lists use, checked without json.loads.
_FAST_CALLED = re.compile(
    r'^\[\{"calledNo":"([0-9*#]{1,24})"(?:,"delayTime":"(\d{1,4})")?'
    r'(?:,"type":"[^"\\]*")?\}\]$'
)
_SERIAL_1970, _SERIAL_2100 = 25569, 73051  # Excel date serials of 1970-01-01 and 2100-01-01
_EXACT_DIGITS = 15  # Excel keeps 15 significant digits of a number
_LENGTHS = {"sessionId": 32, "caller": 24, "customField": 200, "callData": 1024}


def column_of(header: Any) -> str | None:
    """The template column a header cell names, ignoring annotations such as ``(Mandatory)``."""
    if not isinstance(header, str):
        return None
    match = _HEADER_NAME.match(header)
    return _BY_FOLDED.get(match.group(1).casefold()) if match else None


def cell_text(value: Any) -> str:
    """A cell as the text iSales would read; integral numbers as their digits, never ``1.0``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value).strip()


def _is_corrupted_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (len(str(int(abs(value)))) > _EXACT_DIGITS)
    )


def _parse_called(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    # The official template's own example is [{'calledNo':1234566}]: single quotes, bare number.
    return json.loads(text.replace("'", '"'))


class RowChecker:
    """Checks data rows and adds what it finds to a :class:`Report`."""

    def __init__(self, report: Report, *, call_data_json: bool) -> None:
        self.report = report
        self.call_data_json = call_data_json
        self._recycle_verdicts: dict[str, bool] = {}
        self._checks: dict[str, Callable[[int, Any], None]] = {
            "called": self._called,
            "recycleTime": self._recycle_time,
            "priority": self._priority,
            "sessionId": self._session_id,
        }
        self._numbers: set[int] = set()
        self._session_ids: set[int] = set()

    def check(self, row: int, cells: Mapping[str, Any]) -> None:
        """Check one data row; ``cells`` maps template column names to raw cell values."""
        if cells.get("called") in (None, ""):
            self.report.add("called_missing", row, "called", "", "called is empty")
        for column, value in cells.items():
            if value is None or value == "":
                continue
            if column in _LENGTHS and _is_corrupted_number(value):
                self._add(
                    "number_corrupted",
                    row,
                    column,
                    value,
                    f"{column} holds the number {value!r}: digits were lost",
                )
                continue
            check = self._checks.get(column)
            if check is not None:
                check(row, value)
            elif column in _LENGTHS:
                self._length(row, column, cell_text(value))

    def _add(self, kind: str, row: int, column: str, value: Any, message: str) -> None:
        self.report.add(kind, row, column, cell_text(value), message)

    def _length(self, row: int, column: str, text: str) -> None:
        limit = _LENGTHS[column]
        if len(text) > limit:
            self._add(
                f"{column.lower()}_too_long",
                row,
                column,
                text,
                f"{column} has {len(text)} characters; at most {limit} are allowed",
            )
        elif column == "callData" and self.call_data_json:
            try:
                json.loads(text)
            except ValueError:
                self._add("calldata_not_json", row, column, text, "callData is not valid JSON")

    def _called(self, row: int, value: Any) -> None:
        if not isinstance(value, str):
            if _is_corrupted_number(value):
                self._add(
                    "number_corrupted",
                    row,
                    "called",
                    value,
                    f"called holds the number {value!r}: digits were lost",
                )
            else:
                self._add(
                    "called_not_json",
                    row,
                    "called",
                    value,
                    f'called holds a bare number; write [{{"calledNo":"{cell_text(value)}"}}]',
                )
            return
        text = value.strip()
        fast = _FAST_CALLED.match(text)
        if fast is not None:
            if fast.group(2) is not None and int(fast.group(2)) > 7200:
                self._add("delaytime_invalid", row, "called", text, "delayTime is above 7200")
            self._note_number(row, text, fast.group(1))
            return
        try:
            numbers = _parse_called(text)
        except ValueError:
            self._add("called_not_json", row, "called", text, "called is not valid JSON")
            return
        if not isinstance(numbers, list) or not all(isinstance(n, dict) for n in numbers):
            self._add(
                "called_not_json",
                row,
                "called",
                text,
                "called must be a list of objects: [{...}, {...}]",
            )
        elif not numbers:
            self._add("called_missing", row, "called", text, "called is an empty list")
        else:
            for number in numbers:
                self._number(row, text, number)

    def _number(self, row: int, text: str, number: dict[str, Any]) -> None:
        called_no = number.get("calledNo")
        if called_no is None or called_no == "":
            self._add("calledno_missing", row, "called", text, "an entry has no calledNo")
        elif isinstance(called_no, (float, bool)):
            self._add(
                "calledno_invalid",
                row,
                "called",
                text,
                f"calledNo {called_no!r} is not a whole phone number; write it in quotes",
            )
        else:
            digits = str(called_no)
            if not _CALLED_NO.match(digits):
                self._add(
                    "calledno_invalid",
                    row,
                    "called",
                    text,
                    f"calledNo {digits!r} may contain only digits, * and #",
                )
            elif len(digits) > 24:
                self._add(
                    "calledno_too_long",
                    row,
                    "called",
                    text,
                    f"calledNo has {len(digits)} characters; at most 24 are allowed",
                )
            else:
                self._note_number(row, text, digits)
        delay = number.get("delayTime")
        if delay is not None and delay != "":
            text_delay = str(delay)
            if isinstance(delay, bool) or not text_delay.isdigit() or int(text_delay) > 7200:
                self._add(
                    "delaytime_invalid",
                    row,
                    "called",
                    text,
                    f"delayTime {delay!r} must be a whole number from 0 to 7200",
                )

    def _note_number(self, row: int, text: str, digits: str) -> None:
        # Hashes, not the strings: 500,000 numbers must not cost 50 MB.
        key = hash(digits)
        if key in self._numbers:
            self._add(
                "duplicate_called_no",
                row,
                "called",
                text,
                f"{digits} is also called on an earlier row",
            )
        else:
            self._numbers.add(key)

    def _session_id(self, row: int, value: Any) -> None:
        text = cell_text(value)
        self._length(row, "sessionId", text)
        key = hash(text)
        if key in self._session_ids:
            self._add(
                "duplicate_session_id",
                row,
                "sessionId",
                text,
                f"sessionId {text!r} is also used on an earlier row",
            )
        else:
            self._session_ids.add(key)

    def _recycle_time(self, row: int, value: Any) -> None:
        if isinstance(value, date):
            return  # an Excel date cell: converted on import
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if _SERIAL_1970 <= value < _SERIAL_2100:
                return  # a date serial in a cell without a date format
            self._add(
                "recycletime_invalid",
                row,
                "recycleTime",
                value,
                f"recycleTime holds the number {cell_text(value)}, not a date",
            )
            return
        text = cell_text(value)
        verdict = self._recycle_verdicts.get(text)
        if verdict is None:
            verdict = bool(_RECYCLE.match(text))
            if verdict:
                try:
                    datetime.strptime(text, "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007 (a calendar check)
                except ValueError:
                    verdict = False
            if len(self._recycle_verdicts) < 10_000:
                self._recycle_verdicts[text] = verdict
        if not verdict:
            self._add(
                "recycletime_invalid",
                row,
                "recycleTime",
                text,
                f"recycleTime {text!r} is not a real date as yyyy-mm-dd hh:mm:ss",
            )

    def _priority(self, row: int, value: Any) -> None:
        text = cell_text(value)
        if not (text.isdigit() and 1 <= int(text) <= 5):
            self._add(
                "priority_invalid",
                row,
                "priority",
                text,
                f"priority {text!r} must be 1, 2, 3, 4 or 5",
            )
