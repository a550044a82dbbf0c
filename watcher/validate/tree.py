"""The robust reader: ElementTree, for the parts the fast tokeniser does not understand.

It resolves namespaces itself, so it reads any spelling of the main namespace, cells without
``r=``, attributes in any order. Elements count when they are in the namespace of the part's
root element, which must be the main namespace (or none: a few writers leave it out); an element
in another namespace is never taken for a cell or a string.

Memory stays flat: the XML is fed in pieces, a cell is dropped once read (a row never holds more
than one), a row or a string once yielded, and a row or a string larger than the fast path
allows is refused while it is being read, as there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, cast
from xml.etree import ElementTree

from watcher.errors import WorkbookRejected
from watcher.validate.markup import (
    MAIN,
    MAX_COLUMN,
    MAX_ROW,
    column_index,
    has_dtd,
    refuse_cell,
    refuse_dtd,
    refuse_row,
)

__all__ = ("CellValue", "PartEvents", "Row", "TreeRows", "strings")

Row = tuple[int, list[Any]]  # (Excel row number, cell values from column A, or kept columns)
CellValue = Callable[[str, str, str, str], Any]  # (t=, s=, <v> text, inline text) -> value
_FEED_BYTES = 1 << 16
_REFERENCE = re.compile(r"([A-Z]{1,3})(\d{1,7})")


class PartEvents:
    """The ("start" or "end", element) events of one XML part, fed to the parser in pieces.

    A DTD or an entity declaration is refused wherever it stands (the prolog is checked before
    the part is opened; this covers the rest). Between :meth:`enter` and :meth:`leave`, more
    than ``limit_bytes`` of XML is refused, checked as the bytes are fed rather than when the
    element ends.
    """

    def __init__(self, stream: IO[bytes], name: str, limit_bytes: int, what: str) -> None:
        self.namespace = ""  # of the root element, as "{uri}", or "" for none
        self.root: ElementTree.Element | None = None
        self._stream = stream
        self._name = name
        self._limit_bytes = limit_bytes
        self._what = what
        self._position = 0
        self._entered = -1
        self._rooted = False

    def enter(self) -> None:
        """An element whose size is limited starts."""
        self._entered = self._position

    def leave(self) -> None:
        self._entered = -1

    def __iter__(self) -> Iterator[tuple[str, ElementTree.Element]]:
        parser: ElementTree.XMLPullParser[ElementTree.Element] = ElementTree.XMLPullParser(
            ("start", "end")
        )
        tail = b""
        try:
            while chunk := self._stream.read(_FEED_BYTES):
                if has_dtd(chunk) or has_dtd(tail + chunk[:16]):
                    refuse_dtd(self._name)
                tail = chunk[-16:]
                self._position += len(chunk)
                parser.feed(chunk)
                yield from self._events(parser)
                if self._entered >= 0 and self._position - self._entered > self._limit_bytes:
                    raise WorkbookRejected(
                        "cell_too_long",
                        f"{self._what} is larger than {self._limit_bytes:,} bytes; "
                        "Excel cannot have made it",
                    )
            parser.close()
            yield from self._events(parser)
        except ElementTree.ParseError as exc:
            raise WorkbookRejected("unreadable", f"{self._name} is not valid XML: {exc}") from None

    def _events(
        self, parser: ElementTree.XMLPullParser[ElementTree.Element]
    ) -> Iterator[tuple[str, ElementTree.Element]]:
        for item in parser.read_events():
            event, element = cast("tuple[str, ElementTree.Element]", item)  # start, end only
            if not self._rooted:
                self._root(element)
            yield event, element

    def _root(self, element: ElementTree.Element) -> None:
        namespace = element.tag[1:].partition("}")[0] if element.tag[:1] == "{" else ""
        if namespace not in (MAIN, ""):
            raise WorkbookRejected(
                "unreadable",
                f"{self._name} is not SpreadsheetML (its root is in namespace {namespace[:80]!r})",
            )
        self.namespace = f"{{{namespace}}}" if namespace else ""
        self.root = element
        self._rooted = True


def _text(inline: ElementTree.Element, ns: str) -> str:
    """The text of an <is> or <si>: its <t>, and the <t> of its runs (never phonetic runs)."""
    texts: list[str] = []
    for child in inline:
        if child.tag == f"{ns}t":
            texts.append(child.text or "")
        elif child.tag == f"{ns}r":
            texts.extend(t.text or "" for t in child if t.tag == f"{ns}t")
    return "".join(texts)


def _drop(element: ElementTree.Element, holder: ElementTree.Element | None) -> None:
    """Anything that ends outside a row (junk between rows, parts after the sheet data) is
    dropped at once: only a row's cells are ever kept, one at a time."""
    if holder is not None and element is not holder:
        holder.clear()


def strings(events: PartEvents) -> Iterator[str]:
    """The shared strings of a ``sharedStrings.xml``, in order."""
    root: ElementTree.Element | None = None
    si = ""
    for event, element in events:
        if root is None:
            root, si = element, f"{events.namespace}si"
        if element.tag != si:
            continue
        if event == "start":
            events.enter()
            continue
        events.leave()
        yield _text(element, events.namespace)
        root.clear()  # the strings read so far


class TreeRows:
    """The rows of a worksheet, by ElementTree.

    Rows and cells must come in order, as on the fast path (see ``watcher.validate.xlsx``).

    Args:
        events: the sheet's events (their limit bounds a row).
        value: makes a cell's value from its type, style, value text and inline text.
        kept: asked at each row: the slot of each column (-1: skip it), or None for all.
    """

    def __init__(
        self,
        events: PartEvents,
        value: CellValue,
        kept: Callable[[], Sequence[int] | None],
    ) -> None:
        self._events = events
        self._value = value
        self._kept = kept
        self._row: ElementTree.Element | None = None
        self._number = 0
        self._column = -1
        self._values: list[Any] = []
        self._slots: Sequence[int] | None = None
        self._tags = ("", "", "", "", "")

    def __iter__(self) -> Iterator[Row]:
        parent: ElementTree.Element | None = None
        for event, element in self._events:
            row, cell, sheet_data = self._named()[:3]
            if element.tag == row:
                if event == "start":
                    self._start_row(element)
                    continue
                self._row = None
                self._events.leave()
                if any(value is not None and value != "" for value in self._values):
                    yield self._number, self._values
                if parent is not None:
                    parent.clear()  # the rows read so far
            elif element.tag == sheet_data:
                if event == "end":
                    return  # nothing after the sheet data holds a row: read no further
                parent = element
            elif element.tag == cell and event == "end" and self._row is not None:
                self._add_cell(element)
                self._row.clear()  # a row holds one cell at a time
            elif event == "end" and self._row is None:
                _drop(element, parent or self._events.root)

    def _named(self) -> tuple[str, str, str, str, str]:
        """The tags of row, c, sheetData, v and is in the root's namespace."""
        if not self._tags[0]:
            ns = self._events.namespace
            self._tags = (f"{ns}row", f"{ns}c", f"{ns}sheetData", f"{ns}v", f"{ns}is")
        return self._tags

    def _start_row(self, row: ElementTree.Element) -> None:
        given = row.get("r")
        if given is not None and not (given.isdigit() and len(given) <= 7):
            raise WorkbookRejected("unreadable", f"a row is numbered {given[:20]!r}")
        number = int(given) if given else self._number + 1
        if not self._number < number <= MAX_ROW:
            refuse_row(self._number, number)
        self._row, self._number, self._column = row, number, -1
        self._values, self._slots = [], self._kept()
        self._events.enter()

    def _add_cell(self, cell: ElementTree.Element) -> None:
        column = self._column_of(cell.get("r"))
        slot = column if self._slots is None else self._slots[column]
        if slot < 0:
            return
        raw = text = ""
        for child in cell:
            if child.tag == self._tags[3]:
                raw = child.text or ""
            elif child.tag == self._tags[4]:
                text = _text(child, self._events.namespace)
        values = self._values
        values.extend([None] * (slot - len(values)))
        values.append(self._value(cell.get("t") or "", cell.get("s") or "", raw, text))

    def _column_of(self, reference: str | None) -> int:
        """The column of a cell, which must stand right of the cell before it in its row."""
        if reference is None:
            column = self._column + 1
            if column >= MAX_COLUMN:
                raise WorkbookRejected(
                    "unreadable", f"row {self._number:,} has more cells than Excel's grid allows"
                )
        else:
            match = _REFERENCE.fullmatch(reference)
            column = column_index(match[1] if match else reference.rstrip("0123456789"))
            if match is None or int(match[2]) != self._number:
                raise WorkbookRejected(
                    "unreadable", f"cell {reference[:20]!r} stands in row {self._number:,}"
                )
        if column <= self._column:
            refuse_cell(str(reference), column == self._column)
        self._column = column
        return column
