"""Runs of alike rows, found whole by a pattern made for the sheet's own rows, and decoded a
column at a time in loops that run in C.

Most data rows of a list hold the same cells: the same columns, each of one kind (a shared
string, an inline string, a plain whole number). Once the reader has read such a row, a
pattern for a whole row of that shape is made (:class:`RowShape`); it finds a row in one
match, with one group for each kept cell, where the cell pattern needs a match and seven
groups for each cell. A row the pattern does not take whole (a missing cell, another kind of
value, an entity, a style that may make a date) is caught whole by its second branch and
read a cell at a time by the reader, in its place.

A run that breaks a rule the reader enforces (rows out of order, a shared string that does
not exist, a cell too long) is read a cell at a time too, so the reader says what is wrong
at its own place.
"""

from __future__ import annotations

import re
from itertools import chain, compress, count, islice
from math import ceil
from operator import itemgetter, le, lt, methodcaller
from typing import Any

from watcher.validate.markup import MAX_ROW
from watcher.validate.text import SharedStrings

__all__ = ("Block", "RowShape", "decode", "split")

_DECODE = methodcaller("decode")
_STRING, _INLINE, _NUMBER, _OTHER = "s", "inline", "number", "other"
_STRETCHES = 8  # stretches of the table decoded for one run, at most
_MIN_STRETCH = 8  # strings used, below which a stretch costs more than decoding them alone

# The cells of a row, each with "@" for the prefix and "L" for its column letters; the first
# of a row captures the row's number (group 1), the others must repeat it.
_FIRST = rb'<@c r="L(\d{1,7})"'
_NEXT = rb'<@c r="L\1"'
_CELLS = {
    _STRING: rb'(?: s="\d+")? t="s"><@v>(\d{1,10})</@v></@c>',
    _INLINE: rb'(?: s="\d+")? t="inlineStr"><@is><@t>([^<&]*)</@t></@is></@c>',
    _NUMBER: rb'(?: t="n")?><@v>(\d{1,15})</@v></@c>',
    _OTHER: rb'(?: s="\d+")?(?: t="[a-zA-Z]+")?'
    rb"(?:>(?:<@v>[^<]*</@v>|<@is><@t>[^<]*</@t></@is>)</@c>|/>)",
}
_ODD_ROW = rb"|(<@row\b.*?</@row>)"  # any other row: its whole text, the last group


class Block:
    """The rows of a run: their numbers, their labels as written, and their kept values."""

    __slots__ = ("cells", "empty", "labels", "numbers", "rows")

    def __init__(
        self, numbers: list[int], labels: tuple[bytes, ...], rows: list[list[Any]], cells: int
    ) -> None:
        self.empty = False  # whether a value is "": then a row may hold nothing at all
        self.numbers = numbers
        self.labels = labels
        self.rows = rows
        self.cells = cells  # the cell elements the run holds, kept or not


class RowShape:
    """The shape of a data row, and the pattern that finds rows of that shape whole.

    Args:
        columns: each cell's column letters, kind and whether the reader keeps it, in order.
        present: for each value of a row yielded, whether the row holds its cell.
        prefix: the prefix the sheet's tags carry (b"" or e.g. b"x:").
    """

    def __init__(
        self, columns: list[tuple[bytes, str, bool]], present: list[bool], prefix: bytes
    ) -> None:
        self.width = len(columns)
        kinds = iter([kind for _, kind, kept in columns if kept])
        # The kind of each value of a row yielded; None where the row lacks a kept cell.
        self.kinds: list[str | None] = [next(kinds) if cell else None for cell in present]
        self.groups = len(present) - self.kinds.count(None)
        escaped = re.escape(prefix)
        cells = []
        for at, (letters, kind, kept) in enumerate(columns):
            start = (_FIRST if at == 0 else _NEXT).replace(b"L", letters)
            cells.append(start + _CELLS[kind if kept else _OTHER])
        row = rb"<@row\b[^>]*(?<!/)>" + b"".join(cells) + rb"</@row>" + _ODD_ROW
        self.pattern = re.compile(row.replace(b"@", escaped), re.S)

    @classmethod
    def learn(
        cls, cells: list[tuple[bytes, ...]], places: dict[bytes, float], prefix: bytes
    ) -> RowShape | None:
        """The shape of the last row of ``cells`` (a piece read a cell at a time), if its cells
        are in order, each kept one with a value of a kind a row pattern can take."""
        if not cells:
            return None
        label = cells[-1][1]
        row = []
        for cell in reversed(cells):
            if cell[1] != label:
                break
            row.append(cell)
        row.reverse()
        spots = [places.get(cell[0]) for cell in row]
        if None in spots or any(map(le, spots[1:], spots)):  # type: ignore[arg-type]
            return None
        columns: list[tuple[bytes, str, bool]] = []
        for (letters, _, style, kind, raw, inline, _rich), place in zip(row, spots, strict=True):
            kept = type(place) is int
            columns.append((letters, _kind(style, kind, raw, inline) if kept else _OTHER, kept))
            if kept and columns[-1][1] == _OTHER:
                return None
        # A row yielded reaches its last kept cell, or the place of a cell skipped after it.
        length = max(place + 1 if type(place) is int else ceil(place) for place in spots)  # type: ignore[arg-type]
        kept_places = {place for place in spots if type(place) is int}
        if not kept_places:  # a row of cells not kept: the reader yields no such row
            return None
        return cls(columns, [at in kept_places for at in range(length)], prefix)


def _kind(style: bytes, kind: bytes, raw: bytes, inline: bytes) -> str:
    if kind == b"s" and raw.isdigit():
        return _STRING
    if kind == b"inlineStr" and b"&" not in inline:
        return _INLINE
    if kind in (b"", b"n") and not style and raw.isdigit():
        return _NUMBER
    return _OTHER


def split(found: list[tuple[bytes, ...]]) -> list[tuple[int, int, bytes | None]]:
    """The rows a row pattern found, as runs: (first, end, None) for rows of its shape, and
    (at, at + 1, text) for each other row."""
    odd = list(compress(count(), map(itemgetter(-1), found)))
    parts: list[tuple[int, int, bytes | None]] = []
    start = 0
    for at in odd:
        if start < at:
            parts.append((start, at, None))
        parts.append((at, at + 1, found[at][-1]))
        start = at + 1
    if start < len(found):
        parts.append((start, len(found), None))
    return parts


def decode(
    shape: RowShape, found: list[tuple[bytes, ...]], strings: SharedStrings, max_chars: int
) -> Block | None:
    """The rows of a run of ``shape`` (``found``, the pattern's matches), if the reader would
    take them as they are: rising row numbers, shared strings that exist, texts within
    ``max_chars``. Else None: the reader reads them a cell at a time."""
    labels, *groups = islice(zip(*found, strict=True), shape.groups + 1)
    numbers = list(map(int, labels))
    if numbers[0] < 1 or numbers[-1] > MAX_ROW:
        return None
    if not all(map(lt, numbers, islice(numbers, 1, None))):
        return None
    raws_of = dict(zip([at for at, kind in enumerate(shape.kinds) if kind], groups, strict=True))
    shared = [at for at, kind in enumerate(shape.kinds) if kind == _STRING]
    texts = _shared([raws_of[at] for at in shared], strings) if shared else []
    if texts is None:
        return None
    texts_of = dict(zip(shared, texts, strict=True))
    columns: list[list[Any]] = []
    for at, kind in enumerate(shape.kinds):
        values: list[Any]
        if kind is None:  # a kept cell these rows lack
            values = [None] * len(numbers)
        elif kind == _STRING:
            values = texts_of[at]
        elif kind == _INLINE:
            values = list(map(_DECODE, raws_of[at]))
            if max(map(len, values)) > max_chars:
                return None
        else:
            values = list(map(int, raws_of[at]))
        columns.append(values)
    rows = list(map(list, zip(*columns, strict=True)))
    block = Block(numbers, labels, rows, shape.width * len(found))
    block.empty = any("" in values for values in columns)
    return block


def _shared(columns: list[tuple[bytes, ...]], strings: SharedStrings) -> list[list[str]] | None:
    """The shared strings of some columns of a run, or None if an index does not exist.

    Strings numbered together are decoded as stretches of the table, each split at the NULs
    that follow its strings (XML cannot hold a NUL). A stretch is taken where at least half
    the strings it holds are used: most runs take one; columns numbered apart (a writer given
    a column at a time) take a few. The rest, such as values seen long before (a repeat, a
    value many rows share), are decoded one by one.
    """
    indices = [list(map(int, raws)) for raws in columns]
    if max(map(max, indices)) >= len(strings):
        return None
    wanted = sorted(set(chain.from_iterable(indices)))
    found: dict[int, str] = {}
    for _ in range(_STRETCHES):
        at = _dense_from(wanted)
        if len(wanted) - at < _MIN_STRETCH:
            break
        low, high = wanted[at], wanted[-1]
        texts = strings.stretch(low, high)
        if texts is None:
            break
        found.update(zip(range(low, high + 1), texts, strict=True))
        del wanted[at:]
        if not wanted:
            break
    if wanted:
        found.update(zip(wanted, strings.each(wanted), strict=True))
    return [list(map(found.__getitem__, column)) for column in indices]


def _dense_from(wanted: list[int]) -> int:
    """Where the stretch of the table that ends at the last of ``wanted`` (ascending) can start
    and still have at least half its strings in ``wanted``: the lowest such place a binary
    search finds."""
    low, high, last = 0, len(wanted) - 1, wanted[-1]
    while low < high:
        middle = (low + high) // 2
        if last - wanted[middle] + 1 <= 2 * (len(wanted) - middle):
            high = middle
        else:
            low = middle + 1
    return low
