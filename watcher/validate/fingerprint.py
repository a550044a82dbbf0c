"""The fingerprint of a list's data rows: the same customers give the same fingerprint.

"Sent twice" must mean the same list, not the same bytes. Two exports of the same rows differ
in their bytes (timestamps in docProps, another writer, an Excel re-save), and so does the same
list with its columns or rows in another order. The fingerprint is taken over what iSales would
import instead: the text of each row's template cells.

Format: ``rows-v1:<data rows>:<64 hex digits>``. A row's cells are taken in column-name order,
each as :func:`~watcher.validate.rules.cell_text` gives it (an integral number as its digits,
surrounding whitespace stripped), an empty cell or a column the header lacks as "". The texts
are joined by U+001F and hashed with BLAKE2b-256. The row digests are added as integers modulo
2**256: a sum ignores row order, counts a repeated row twice (a multiset), and the sums of two
parts of a sheet add up to the sum of the whole sheet.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from hashlib import blake2b
from operator import itemgetter, methodcaller
from typing import Any

from watcher.validate.rules import TEMPLATE_COLUMNS, cell_text

__all__ = ("RowsFingerprint",)

_VERSION = "rows-v1"  # a new encoding, or a new template column, needs a new version
_ORDER = tuple(sorted(TEMPLATE_COLUMNS))
_UNIT = "\x1f"
_UNITS = len(_ORDER) - 1  # separators in a row's key
_MODULUS = 1 << 256

FingerprintState = tuple[int, int]
_HASH = partial(blake2b, digest_size=32)
_DIGEST = methodcaller("digest")
_NUMBER = partial(int.from_bytes, byteorder="big")
_COUNT_UNITS = methodcaller("count", _UNIT)
_ONLY_STR = {str}
_ONLY_INT = {int}


def _escaped(texts: list[str]) -> bytes:
    """The key of a row whose texts hold U+001F or a lone surrogate (no reader makes either).

    JSON is unambiguous, ASCII, and has no raw U+001F at all, so it never equals the key of
    another row joined by U+001F.
    """
    return json.dumps(texts).encode()


def _texts(column: tuple[Any, ...]) -> list[str]:
    """The text of each cell of a column, as :meth:`RowsFingerprint.add` takes it."""
    kinds = set(map(type, column))
    if kinds == _ONLY_STR:
        return list(map(str.strip, column))
    if kinds == _ONLY_INT:
        return list(map(str, column))
    return [value.strip() if type(value) is str else cell_text(value) for value in column]


class RowsFingerprint:
    """Accumulates the fingerprint of data rows, in any order and in any number of parts.

    Args:
        columns: the template column of each cell index that the header names.
    """

    __slots__ = ("_min_width", "_pad", "_pick", "_sum", "rows")

    def __init__(self, columns: dict[int, str]) -> None:
        index_of = {name: index for index, name in columns.items()}
        # A column the header lacks reads index -1 of the padded row: a padding cell, None.
        slots = [index_of.get(name, -1) for name in _ORDER]
        self._pick = itemgetter(*slots)
        self._pad: list[Any] = [None] * (max(slots) + 1)
        self._min_width = sys.maxsize if -1 in slots else max(slots) + 1
        self._sum = 0
        self.rows = 0

    def add(self, values: list[Any]) -> None:
        """Add one data row (cell values by column index)."""
        # This runs for every row: a loop rather than a comprehension (which costs a function
        # object per call before Python 3.12), and only plain calls for the common cells.
        cells = self._pick(values if len(values) >= self._min_width else values + self._pad)
        texts: list[str] = []
        for value in cells:
            texts.append(value.strip() if type(value) is str else cell_text(value))
        key = _UNIT.join(texts)
        try:
            data = key.encode() if key.count(_UNIT) == _UNITS else _escaped(texts)
        except UnicodeEncodeError:  # a lone surrogate, which strict UTF-8 refuses
            data = _escaped(texts)
        self._sum += int.from_bytes(blake2b(data, digest_size=32).digest(), "big")
        self.rows += 1

    def add_many(self, rows: list[list[Any]]) -> None:
        """Add data rows, as :meth:`add` would one by one, in loops that run in C."""
        if not rows:
            return
        if min(map(len, rows)) < self._min_width:
            rows = [
                values if len(values) >= self._min_width else values + self._pad for values in rows
            ]
        columns = zip(*map(self._pick, rows), strict=True)
        keys = list(map(_UNIT.join, zip(*map(_texts, columns), strict=True)))
        try:
            if sum(map(_COUNT_UNITS, keys)) != _UNITS * len(keys):
                raise ValueError("a cell holds U+001F")
            data = list(map(str.encode, keys))  # a lone surrogate raises UnicodeEncodeError
        except ValueError:
            for values in rows:
                self.add(values)
            return
        self._sum += sum(map(_NUMBER, map(_DIGEST, map(_HASH, data))))
        self.rows += len(rows)

    def export(self) -> FingerprintState:
        """The partial fingerprint of a later part of a sheet, for :meth:`absorb`."""
        return self.rows, self._sum

    def absorb(self, state: FingerprintState) -> None:
        """Add the rows of another part of the same sheet."""
        rows, total = state
        self.rows += rows
        self._sum += total

    def hexdigest(self) -> str:
        """The fingerprint, as ``rows-v1:<data rows>:<64 hex digits>``."""
        return f"{_VERSION}:{self.rows}:{self._sum % _MODULUS:064x}"
