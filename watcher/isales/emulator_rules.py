"""What the emulated iSales checks in a request, and how it counts the records of a file.

As strict as the vendor's documents: every field's type and range, with the documented codes.
As varied as a real import: a repeated number is a ``repeatNum``, a blacklisted one a
``blackNum``, a row without a number a ``failNum``.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
from collections import Counter
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from python_calamine import CalamineWorkbook

__all__ = (
    "Blacklist",
    "ImportCounts",
    "RefusedError",
    "id_list",
    "int_field",
    "page_of",
    "schedule_of",
    "tally_rows",
    "upload_fields",
)

_UPLOAD_FIELDS = frozenset({"serverId", "filePath", "fileName", "hour", "minute"})


class Blacklist:
    """The called numbers iSales refuses (``blackNum``): exact numbers, or numbers ending so.

    A ``Container[str]``; any other container (a plain ``set``) can take its place.
    """

    __slots__ = ("numbers", "suffixes")

    def __init__(self, numbers: Iterable[str] = (), *, suffixes: Iterable[str] = ("0000",)) -> None:
        self.numbers = set(numbers)
        self.suffixes = tuple(suffixes)

    def __contains__(self, number: object) -> bool:
        return isinstance(number, str) and (
            number in self.numbers or any(number.endswith(s) for s in self.suffixes)
        )

    def add(self, number: str) -> None:
        self.numbers.add(number)

    def __repr__(self) -> str:
        return f"Blacklist({sorted(self.numbers)!r}, suffixes={self.suffixes!r})"


@dataclass(frozen=True, slots=True)
class ImportCounts:
    """How the rows of one import ended."""

    succ_num: int = 0
    repeat_num: int = 0
    fail_num: int = 0
    black_num: int = 0


class RefusedError(Exception):
    """A request the server answers with an error code (HTTP 200, as iSales does)."""

    def __init__(self, code: str, desc: str) -> None:
        super().__init__(desc)
        self.code, self.desc = code, desc


# -- request fields --------------------------------------------------------------------------


def int_field(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        raise RefusedError("02000001", f"{name} is required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise RefusedError("02000006", f"{name} must be an integer")
    if not low <= value <= high:
        raise RefusedError("02000007", f"{name} must be {low} to {high}")
    return value


def page_of(body: dict[str, Any]) -> slice:
    offset = int_field(body, "offset", 0, 2**31 - 1)
    return slice(offset, offset + int_field(body, "limit", 1, 100))


def id_list(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RefusedError("02000006", f"{name} must be a list of strings")
    return value


def upload_fields(body: dict[str, Any]) -> tuple[str, str, str]:
    """serverId, fileName (required) and filePath (optional) of an upload."""
    extra = set(body) - _UPLOAD_FIELDS
    if extra:
        raise RefusedError("02000011", f"unexpected parameters {sorted(extra)}")
    values = [body.get(name) for name in ("serverId", "fileName", "filePath")]
    if not all(value is None or isinstance(value, str) for value in values):
        raise RefusedError("02000006", "serverId, fileName and filePath must be strings")
    server_id, file_name, file_path = values
    if not server_id or not file_name:
        raise RefusedError("02000001", "serverId and fileName are required")
    return server_id, file_name, file_path or ""


def _clock_field(name: str, value: object, high: int) -> int:
    if not isinstance(value, str):
        raise RefusedError("02000006", f"{name} must be a string")
    if not re.fullmatch(r"\d{1,2}", value) or int(value) > high:
        raise RefusedError("02000007", f"{name} must be 0 to {high}")
    return int(value)


def schedule_of(body: dict[str, Any]) -> tuple[int, int] | None:
    hour, minute = body.get("hour"), body.get("minute")
    if hour is None and minute is None:
        return None
    if hour is None or minute is None:
        raise RefusedError("02000010", "hour and minute must be set together")
    return _clock_field("hour", hour, 23), _clock_field("minute", minute, 59)


# -- the file, as an importer reads it -------------------------------------------------------


def _cell_text(cell: object) -> str:
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))  # a number typed into the sheet, not 13800138000.0
    return "" if cell is None else str(cell).strip()


def _called_cells(data: bytes) -> Iterator[str]:
    """The ``called`` cell of every non-empty data row below the header row."""
    workbook = CalamineWorkbook.from_filelike(io.BytesIO(data))
    called_col: int | None = None
    for row in workbook.get_sheet_by_index(0).iter_rows():
        cells = [_cell_text(c) for c in row]
        if called_col is None:
            for index, cell in enumerate(cells):
                if re.match(r"(?i)^called\b", cell):
                    called_col = index
            continue
        if any(cells):
            yield cells[called_col] if called_col < len(cells) else ""
    if called_col is None:
        raise ValueError("no header row with a called column")


def _parse_lenient(text: str) -> object:
    """JSON, or the single-quoted form people type by hand (``[{'calledNo':1234566}]``)."""
    for parse in (json.loads, ast.literal_eval):
        with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return parse(text)
    return None


def _called_number(cell: str) -> str | None:
    """The row's (first) called number; ``None`` when it has none."""
    value = _parse_lenient(cell)
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        numbers = [
            item.get("calledNo")
            for item in value
            if isinstance(item, dict) and item.get("calledNo")
        ]
        return str(numbers[0]) if numbers else None
    return cell or None  # a bare number, as a lenient importer takes it


def tally_rows(data: bytes, blacklist: Container[str]) -> ImportCounts:
    seen: set[str] = set()
    tally: Counter[str] = Counter()
    for cell in _called_cells(data):
        number = _called_number(cell)
        if number is None:
            tally["fail_num"] += 1
        elif number in seen:
            tally["repeat_num"] += 1
        elif number in blacklist:
            tally["black_num"] += 1
        else:
            tally["succ_num"] += 1
        if number is not None:
            seen.add(number)
    return ImportCounts(**tally)
