"""The template's rules for the cells of a data row. Pure functions over cell values; no I/O.

This runs once per cell of up to 500,000 rows, so each column has its own small checker with a
fast path for the common case (a plain string within its limit), and the general path only
for the rest.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from itertools import chain, compress, count, repeat
from operator import add, and_, itemgetter, lshift, ne, or_
from typing import Any

from watcher.validate.report import Report
from watcher.validate.screen import NUMBERS, Screen, screens

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
_VERDICT_CACHE = 10_000

Check = Callable[[int, Any], None]


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_corrupted_number(value: Any) -> bool:
    return _is_number(value) and len(str(int(abs(value)))) > _EXACT_DIGITS


def _parse_called(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    # The official template's own example is [{'calledNo':1234566}]: single quotes, bare number.
    return json.loads(text.replace("'", '"'))


_DIGITS_KEPT = 18  # "1" and 18 digits, doubled, still fit a signed 64-bit integer


def _key(value: str) -> int:
    """A 64-bit key for ``value``: the digits themselves when they fit, else a hash.

    Odd keys hold their digits (a leading 1 keeps leading zeros), so the receipt can name a
    repeated phone number; even keys are hashes.
    """
    if len(value) <= _DIGITS_KEPT and value.isascii() and value.isdecimal():
        return int("1" + value) << 1 | 1
    return hash(value) & -2


def _keys(values: list[str]) -> Iterable[int]:
    """:func:`_key` of each value; in loops that run in C when the values are of one kind."""
    if not any(map(str.isdecimal, values)):
        return map(and_, map(hash, values), repeat(-2))
    if (
        all(map(str.isdecimal, values))
        and all(map(str.isascii, values))
        and max(map(len, values)) <= _DIGITS_KEPT
    ):
        return map(or_, map(lshift, map(int, map("1".__add__, values)), repeat(1)), repeat(1))
    return map(_key, values)


def _shown(key: int) -> str:
    """The value an odd key holds; an empty string for a hash."""
    return str(key >> 1)[1:] if key & 1 else ""


class _Repeats:
    """Finds values that occur on more than one row, in about 8 bytes per value.

    A set of 500,000 strings would cost 50 MB. The keys (:func:`_key`) are kept in an array
    instead, and the rows they are on as marks: a mark (the value's index, its row) only where
    a value is not on the row after the one before it, as most are. At the end a 2 MB bitmap
    of the keys picks the few candidates, and only those are compared exactly. Values may be
    added in any order of rows: the first row of a value is its lowest.
    """

    _BITS = 1 << 24

    def __init__(self) -> None:
        self._hashes = array("q")
        self._marks = array("i")  # index, row, index, row, ...
        self._next = 0  # the row of the next value when it needs no mark

    def add(self, row: int, value: str) -> None:
        if row != self._next:
            self._marks.extend((len(self._hashes), row))
        self._next = row + 1
        self._hashes.append(_key(value))

    def add_run(self, rows: list[int], values: list[str]) -> None:
        """Add one value for each of ``rows``, as :meth:`add` would one by one."""
        if not rows:
            return
        start = len(self._hashes)
        self._hashes.extend(_keys(values))
        follows = chain((self._next,), map(add, rows, repeat(1)))
        for at in compress(count(), map(ne, rows, follows)):
            self._marks.extend((start + at, rows[at]))
        self._next = rows[-1] + 1

    def export(self) -> tuple[array[int], array[int]]:
        return self._hashes, self._marks

    def absorb(self, state: tuple[array[int], array[int]]) -> None:
        """Add the values of a later part of the sheet (its first value always has a mark)."""
        hashes, marks = state
        offset = len(self._hashes)
        self._hashes.extend(hashes)
        for at in range(0, len(marks), 2):
            self._marks.extend((marks[at] + offset, marks[at + 1]))
        if marks:
            self._next = marks[-1] + len(hashes) - marks[-2]

    def _rows(self) -> Iterator[int]:
        """The row of each value, in order."""
        marks = self._marks
        for at in range(0, len(marks), 2):
            start, row = marks[at], marks[at + 1]
            stop = marks[at + 2] if at + 2 < len(marks) else len(self._hashes)
            yield from range(row, row + stop - start)

    def _candidates(self) -> set[int]:
        bitmap = bytearray(self._BITS >> 3)
        mask = self._BITS - 1
        candidates = set()
        for value in self._hashes:
            bit = (value >> 1) & mask
            if bitmap[bit >> 3] & (1 << (bit & 7)):
                candidates.add(value)
            else:
                bitmap[bit >> 3] |= 1 << (bit & 7)
        return candidates

    def repeats(self) -> list[tuple[int, int, str]]:
        """Rows whose value already appeared on an earlier row, in row order: each with the
        row it was first seen on and the value when its key holds it."""
        candidates = self._candidates()
        seen_on = compress(
            zip(self._rows(), self._hashes, strict=True), map(candidates.__contains__, self._hashes)
        )
        first: dict[int, int] = {}
        found = []
        for row, value in sorted(seen_on, key=itemgetter(0)):  # stable: a row's values in order
            seen = first.get(value)
            if seen is None:
                first[value] = row
            else:
                found.append((row, seen, _shown(value)))
        return sorted(found)


class RowChecker:
    """Checks the cells of data rows and adds what it finds to a :class:`Report`.

    Args:
        report: where problems go.
        columns: the template column of each cell index that the header names.
        call_data_json: callData must be JSON (intelligent-IVR campaigns).
    """

    def __init__(self, report: Report, columns: dict[int, str], *, call_data_json: bool) -> None:
        self.report = report
        self.call_data_json = call_data_json
        self._recycle_verdicts: dict[str, bool] = {}
        self._numbers = _Repeats()
        self._session_ids = _Repeats()
        checks: dict[str, Check] = {
            "sessionId": self._session_id,
            "called": self._called,
            "caller": self._limited("caller"),
            "callData": self._call_data,
            "customField": self._limited("customField"),
            "recycleTime": self._recycle_time,
            "priority": self._priority,
        }
        self._plan = sorted((index, checks[name]) for index, name in columns.items())
        self._called_index = next((i for i, name in columns.items() if name == "called"), None)
        self._session_index = next((i for i, n in columns.items() if n == "sessionId"), None)
        every = screens(_LENGTHS, call_data_json=call_data_json)
        self._screens: list[tuple[Callable[[list[Any]], list[Any]], Screen]] = [
            (itemgetter(index), every[name]) for index, name in sorted(columns.items())
        ]
        self._width = max(columns) + 1 if columns else 0

    def check(self, row: int, values: list[Any]) -> bool:
        """Check one row's cells (by column index); False if it has no template cell at all."""
        width = len(values)
        present = [
            (check, value)
            for index, check in self._plan
            if index < width and (value := values[index]) is not None and value != ""
        ]
        if not present:
            return False
        called = self._called_index
        if called is None or called >= width or values[called] is None or values[called] == "":
            self.report.add("called_missing", row, "called", "", "called is empty")
        for check, value in present:
            check(row, value)
        return True

    def check_many(self, batch: list[tuple[int, list[Any]]]) -> list[list[Any]]:
        """Check a batch of rows, as :meth:`check` would one by one; the data rows' values.

        The screen (:mod:`watcher.validate.screen`) passes the plain rows a column at a time;
        only the others are read by :meth:`check`, in row order.
        """
        if self._called_index is None:  # every row is reported: called is missing
            return [values for row, values in batch if self.check(row, values)]
        suspects = self._screened(batch)
        data = [values for row, values in (batch[at] for at in suspects) if self.check(row, values)]
        if suspects:
            plain_mask = bytearray(b"\x01") * len(batch)
            for at in suspects:
                plain_mask[at] = 0
            batch = list(compress(batch, plain_mask))
        if batch:
            self._add_plain(batch)
            data.extend(values for _, values in batch)
        return data

    def _screened(self, batch: list[tuple[int, list[Any]]]) -> list[int]:
        """The positions in ``batch`` of the rows the screen does not pass, in order."""
        rows = [values for _, values in batch]
        failing: set[int] = set()
        if min(map(len, rows)) < self._width:
            pad = [None] * self._width
            failing.update(at for at, values in enumerate(rows) if len(values) < self._width)
            rows = [values if len(values) >= self._width else values + pad for values in rows]
        for pick, screen in self._screens:
            failing.update(screen(list(map(pick, rows))))
        return sorted(failing)

    def _add_plain(self, plain: list[tuple[int, list[Any]]]) -> None:
        """Keep the sessionIds and numbers of rows the screen passed."""
        rows = [row for row, _ in plain]
        cells = [values for _, values in plain]
        if self._session_index is not None:
            session_ids = map(itemgetter(self._session_index), cells)
            self._session_ids.add_run(rows, list(map(str.strip, session_ids)))
        assert self._called_index is not None
        numbers = list(map(NUMBERS.findall, map(itemgetter(self._called_index), cells)))
        rows = list(chain.from_iterable(map(repeat, rows, map(len, numbers))))
        self._numbers.add_run(rows, list(chain.from_iterable(numbers)))

    def export_repeats(self) -> tuple[tuple[array[int], array[int]], ...]:
        """What :meth:`finish` needs, to be merged into the checker of an earlier part."""
        return self._session_ids.export(), self._numbers.export()

    def absorb_repeats(self, state: tuple[tuple[array[int], array[int]], ...]) -> None:
        self._session_ids.absorb(state[0])
        self._numbers.absorb(state[1])

    def finish(self) -> None:
        """Report the values repeated across rows (kept for the end to save memory)."""
        for row, first, session_id in self._session_ids.repeats():
            self.report.add(
                "duplicate_session_id",
                row,
                "sessionId",
                session_id,
                f"this sessionId is also used on row {first}",
                {"first_row": first},
            )
        for row, first, number in self._numbers.repeats():
            said = f"the number {number}" if number else "a number of this row"
            self.report.add(
                "duplicate_called_no",
                row,
                "called",
                number,
                f"{said} is also called on row {first}",
                {"first_row": first},
            )

    def _add(self, kind: str, row: int, column: str, value: Any, message: str) -> None:
        self.report.add(kind, row, column, cell_text(value), message)

    # -- the general path for the length-limited columns ---------------------------------------

    def _too_long(self, row: int, column: str, value: Any) -> bool:
        """Check a length limit; True if the value was a problem (too long or a broken number)."""
        limit = _LENGTHS[column]
        if type(value) is str:
            if len(value) <= limit or len(value.strip()) <= limit:
                return False
        elif _is_corrupted_number(value):
            self._add(
                "number_corrupted",
                row,
                column,
                value,
                f"{column} holds the number {value!r}: digits were lost",
            )
            return True
        text = cell_text(value)
        if len(text) <= limit:
            return False
        self._add(
            f"{column.lower()}_too_long",
            row,
            column,
            text,
            f"{column} has {len(text)} characters; at most {limit} are allowed",
        )
        return True

    def _limited(self, column: str) -> Check:
        limit = _LENGTHS[column]

        def check(row: int, value: Any) -> None:
            if type(value) is not str or len(value) > limit:
                self._too_long(row, column, value)

        return check

    def _session_id(self, row: int, value: Any) -> None:
        if (type(value) is not str or len(value) > 32) and self._too_long(row, "sessionId", value):
            return
        self._session_ids.add(row, cell_text(value) if type(value) is not str else value.strip())

    def _call_data(self, row: int, value: Any) -> None:
        if (type(value) is not str or len(value) > 1024) and self._too_long(row, "callData", value):
            return
        if self.call_data_json:
            try:
                json.loads(cell_text(value))
            except ValueError:
                self._add("calldata_not_json", row, "callData", value, "callData is not valid JSON")

    # -- called ---------------------------------------------------------------------------------

    def _called(self, row: int, value: Any) -> None:
        if type(value) is not str:
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
                    f'called holds a bare value; write [{{"calledNo":"{cell_text(value)}"}}]',
                )
            return
        fast = _FAST_CALLED.match(value)
        if fast is not None:
            delay = fast.group(2)
            if delay is not None and int(delay) > 7200:
                self._add("delaytime_invalid", row, "called", value, "delayTime is above 7200")
            self._numbers.add(row, fast.group(1))
            return
        text = value.strip()
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
                self._numbers.add(row, digits)
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

    # -- recycleTime and priority ---------------------------------------------------------------

    def _recycle_time(self, row: int, value: Any) -> None:
        if type(value) is str:
            verdict = self._recycle_verdicts.get(value)
            if verdict is None:
                verdict = self._recycle_verdict(value.strip())
                if len(self._recycle_verdicts) < _VERDICT_CACHE:
                    self._recycle_verdicts[value] = verdict
            if not verdict:
                self._add(
                    "recycletime_invalid",
                    row,
                    "recycleTime",
                    value,
                    f"recycleTime {value.strip()!r} is not a real date as yyyy-mm-dd hh:mm:ss",
                )
        elif isinstance(value, date):
            return  # an Excel date cell: converted on import
        elif _is_number(value) and _SERIAL_1970 <= value < _SERIAL_2100:
            return  # a date serial in a cell without a date format
        else:
            self._add(
                "recycletime_invalid",
                row,
                "recycleTime",
                value,
                f"recycleTime holds {cell_text(value)!r}, not a date",
            )

    @staticmethod
    def _recycle_verdict(text: str) -> bool:
        if not _RECYCLE.match(text):
            return False
        try:
            if text.isascii():
                # For ASCII text of this shape, the C parser accepts exactly what strptime
                # does (the same ranges and calendar), 35 times faster: unique times, which
                # the verdict cache cannot help with, cost 0.1 s per 500,000 rows, not 2.6 s.
                datetime.fromisoformat(text)
            else:  # other digits, which strptime takes in some places only
                datetime.strptime(text, "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007 (a calendar check)
        except ValueError:
            return False
        return True

    def _priority(self, row: int, value: Any) -> None:
        if type(value) is int and 1 <= value <= 5:
            return
        text = cell_text(value)
        if not (text.isdigit() and 1 <= int(text) <= 5):
            self._add(
                "priority_invalid",
                row,
                "priority",
                text,
                f"priority {text!r} must be 1, 2, 3, 4 or 5",
            )
