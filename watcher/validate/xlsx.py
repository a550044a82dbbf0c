"""A streaming reader of the first worksheet of an ``.xlsx``, with limits against hostile files.

Why not a library: python-calamine builds the whole sheet in memory (about 550 MB for 500,000
rows) and openpyxl is four times slower (``research/xlsx-perf.md``). This reader inflates the
sheet in 256 KB pieces and tokenises each chunk with one regular expression, so memory stays flat
(the shared-strings table is kept as one UTF-8 buffer plus offsets). A guard counts the ``<c``
tags of every chunk against the cells parsed; any mismatch (a namespace prefix, cells without
``r=``, another attribute order) restarts the file with the slower ElementTree reader instead of
guessing.
"""

from __future__ import annotations

import html
import re
import zipfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any
from xml.etree import ElementTree

from watcher.errors import WorkbookRejected
from watcher.validate.text import BytePieces, SharedStrings, rich_text

__all__ = ("FastPathUnsupported", "Limits", "Row", "SheetReader", "WorkbookRejected")

Row = tuple[int, list[Any]]  # (Excel row number, cell values from column A)

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_OLE = bytes.fromhex("d0cf11e0a1b11ae1")
_ENCRYPTION_INFO = "EncryptionInfo".encode("utf-16-le")
_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_MAX_PROLOG_BYTES = 4 << 20
_MAX_MEMBERS = 10_000


def _prolog_verdict(data: bytes) -> str | None:
    """What the prolog holds: "root" once the root element starts, "dtd" at a DTD, "utf16"
    (which Excel never writes, and where a DTD could hide from a byte search), or None while
    more bytes are needed."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or data[1:2] == b"\x00":
        return "utf16"
    at = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    while True:
        while at < len(data) and data[at : at + 1].isspace():
            at += 1
        if len(data) - at < 9:
            return None
        if data.startswith(b"<?", at):
            closing = b"?>"
        elif data.startswith(b"<!--", at):
            closing = b"-->"
        elif data.startswith(b"<!", at):
            return "dtd"
        else:
            return "root"  # an element (or text, which the parser refuses)
        end = data.find(closing, at + 2)
        if end < 0:
            return None
        at = end + len(closing)


_FAST_CELL = re.compile(
    rb'<c r="([A-Z]{1,3})(\d+)"(?: s="(\d+)")?(?: t="([a-zA-Z]+)")?(?: [a-zA-Z:]+="[^"]*")*(?:/>|>'
    rb"(?:<f>[^<]*</f>|<f [^>]*/>|<f [^>]*>[^<]*</f>)?"
    rb'(?:<v>([^<]*)</v>|<is><t(?: xml:space="preserve")?>([^<]*)</t></is>|<is>(.*?)</is>)?</c>)',
    re.S,
)
_SHARED_STRING = re.compile(
    r'<si><t(?: xml:space="preserve")?>([^<]*)</t></si>|<si>(.*?)</si>|<si/>', re.S
)
_SHARED_STRING_BYTES = re.compile(
    rb'<si><t(?: xml:space="preserve")?>([^<]*)</t></si>|<si>(.*?)</si>|<si/>', re.S
)
_DATE_CODE = re.compile(r"[ydhs]|m")
_BUILTIN_DATE_FORMATS = frozenset([*range(14, 23), *range(27, 37), *range(45, 48), *range(50, 59)])
_EPOCH_1900 = datetime(1899, 12, 30)  # noqa: DTZ001 - Excel dates have no time zone
_EPOCH_1904 = datetime(1904, 1, 1)  # noqa: DTZ001


class FastPathUnsupported(Exception):  # noqa: N818
    """The fast tokeniser met XML it does not understand; use the ElementTree reader."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep a hostile file from exhausting memory or time."""

    max_uncompressed_bytes: int = 2_000_000_000
    max_ratio: float = 200.0  # uncompressed / compressed, for members above 1 MB
    max_cell_chars: int = 32_767  # what Excel itself allows in a cell
    max_row_bytes: int = 8_000_000


_COLUMNS: dict[str, int] = {}  # column letters to index, filled as letters are met
_BYTE_COLUMNS: dict[bytes, int] = {}


_MAX_COLUMN = 16_384  # XFD: Excel's grid ends there
_MAX_ROW = 1_048_576
_LETTERS = re.compile(r"^[A-Z]{1,3}$")


def _column(letters: str) -> int:
    """The index of column ``letters``; a reference outside Excel's grid is refused, never padded
    (column ZZZZZZ would otherwise make a row of 300 million empty cells)."""
    index = _COLUMNS.get(letters)
    if index is None:
        index = 0
        for char in letters:
            index = index * 26 + ord(char) - 64
        if not _LETTERS.match(letters) or index > _MAX_COLUMN:
            raise WorkbookRejected(
                "unreadable",
                f"a cell refers to column {letters[:10]!r}, outside Excel's grid (A to XFD)",
            )
        index = _COLUMNS[letters] = index - 1
    return index


def _row_number(number: int) -> int:
    if not 1 <= number <= _MAX_ROW:
        raise WorkbookRejected(
            "unreadable", f"a row is numbered {number:,}, outside Excel's grid (1 to 1,048,576)"
        )
    return number


def _has_content(values: list[Any]) -> bool:
    return any(value is not None and value != "" for value in values)


def _number(text: str) -> int | float:
    # Integers stay exact: 13800138000 must never become 1.38e10.
    if text.isdigit() or (text[:1] == "-" and text[1:].isdigit()):
        return int(text)
    return float(text)


def _is_date_format(code: str) -> bool:
    code = re.sub(r'"[^"]*"|\[[^\]]*\]|\\.|_.|\*.', "", code.lower()).replace("general", "")
    return bool(_DATE_CODE.search(code))


class SheetReader:
    """Reads the first worksheet of a workbook, row by row.

    Args:
        path: the ``.xlsx`` file.
        limits: bounds against hostile files.
        progress: called with (bytes of sheet XML read, declared total) now and then.

    Raises:
        WorkbookRejected: on opening or while reading, when the file is not acceptable.
    """

    def __init__(
        self,
        path: str,
        limits: Limits | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self._progress = progress
        self._zip = self._open(path)
        self.sheet_name, self._part, self.other_sheets, self._date1904 = self._first_sheet()
        self._date_styles = self._read_date_styles()
        self._strings: SharedStrings | None = None

    # -- opening ---------------------------------------------------------------------------------

    def _open(self, path: str) -> zipfile.ZipFile:
        with open(path, "rb") as raw:
            head = raw.read(1 << 20)
        if head.startswith(_OLE):
            if _ENCRYPTION_INFO in head:
                raise WorkbookRejected("encrypted", "the workbook is protected with a password")
            raise WorkbookRejected("old_xls", "this is an Excel 97-2003 .xls file, not an .xlsx")
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise WorkbookRejected(
                "not_xlsx", f"not an .xlsx workbook (not a ZIP: {exc})"
            ) from None
        try:
            self._check_names(archive)
            self._check_parts(archive)
            self._check_sizes(archive)
        except WorkbookRejected:
            archive.close()
            raise
        return archive

    @staticmethod
    def _check_names(archive: zipfile.ZipFile) -> None:
        """Refuse what an unpacker could be led astray by, before any part is read."""
        members = archive.infolist()
        if len(members) > _MAX_MEMBERS:
            raise WorkbookRejected(
                "unsafe_zip", f"the ZIP holds {len(members):,} parts; a workbook has a few dozen"
            )
        names = [info.filename for info in members]
        if len(set(names)) != len(names):
            raise WorkbookRejected("unsafe_zip", "the ZIP holds two parts with the same name")
        for name in names:
            parts = name.split("/")
            if name.startswith("/") or "\\" in name or ".." in parts or ":" in parts[0]:
                raise WorkbookRejected(
                    "unsafe_zip", f"the ZIP holds a part named {name[:80]!r}, outside the package"
                )

    @staticmethod
    def _check_parts(archive: zipfile.ZipFile) -> None:
        names = set(archive.NameToInfo)
        if any(n.lower().endswith("vbaproject.bin") for n in names):
            raise WorkbookRejected("macros", "the workbook contains macros (VBA)")
        if any(n.startswith("xl/externalLinks/") for n in names):
            raise WorkbookRejected("external_links", "the workbook links to other files")
        if "xl/workbook.xml" not in names:
            raise WorkbookRejected("not_xlsx", "the ZIP holds no Excel workbook (xl/workbook.xml)")

    def _check_sizes(self, archive: zipfile.ZipFile) -> None:
        total = 0
        for info in archive.infolist():
            total += info.file_size
            if info.flag_bits & 0x1:
                raise WorkbookRejected("encrypted", "a part of the workbook is encrypted")
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > 1 << 20 and ratio > self.limits.max_ratio:
                raise WorkbookRejected(
                    "too_large",
                    f"{info.filename} inflates {ratio:,.0f} times (a ZIP bomb?); "
                    f"the limit is {self.limits.max_ratio:g}",
                )
        if total > self.limits.max_uncompressed_bytes:
            raise WorkbookRejected(
                "too_large",
                f"the workbook inflates to {total / 1e9:.1f} GB; the limit is "
                f"{self.limits.max_uncompressed_bytes / 1e9:.1f} GB",
            )

    def _xml(self, name: str, max_bytes: int = 50_000_000) -> ElementTree.Element:
        info = self._zip.getinfo(name)
        if info.file_size > max_bytes:
            raise WorkbookRejected(
                "too_large", f"{name} is unusually large ({info.file_size:,} bytes)"
            )
        self._check_prolog(name)
        data = self._zip.read(name)
        try:
            return ElementTree.fromstring(data)
        except ElementTree.ParseError as exc:
            raise WorkbookRejected("unreadable", f"{name} is not valid XML: {exc}") from None

    @staticmethod
    def _refuse_dtd(prolog: bytes, name: str) -> None:
        if _DTD.search(prolog):
            raise WorkbookRejected(
                "xml_dtd",
                f"{name} declares a DTD or entities, which Excel never writes (an XML bomb?)",
            )

    def _check_prolog(self, name: str) -> None:
        """Refuse a DTD anywhere before the root element, however long the prolog.

        A DTD can only stand in the prolog; it is read whole (comments, processing
        instructions), up to a bound, instead of only its first kilobytes.
        """
        with self._zip.open(name) as stream:
            buffer = b""
            while True:
                verdict = _prolog_verdict(buffer)
                if verdict == "dtd":
                    self._refuse_dtd(b"<!DOCTYPE", name)
                if verdict == "utf16":
                    raise WorkbookRejected("unreadable", f"{name} is UTF-16, not Excel's UTF-8")
                if verdict is not None:
                    return
                chunk = stream.read(1 << 16)
                if not chunk:
                    return  # no root element: the parser says what is wrong
                buffer += chunk
                if len(buffer) > _MAX_PROLOG_BYTES:
                    raise WorkbookRejected(
                        "unreadable", f"{name} has a prolog of more than 4 MB before its content"
                    )

    def _member(self, target: str, base: str = "xl/") -> str:
        name = target.lstrip("/") if target.startswith("/") else base + target
        parts: list[str] = []
        for piece in name.split("/"):
            if piece == "..":
                if parts:
                    parts.pop()
            elif piece not in ("", "."):
                parts.append(piece)
        return "/".join(parts)

    def _first_sheet(self) -> tuple[str, str, list[str], bool]:
        workbook = self._xml("xl/workbook.xml")
        rels = self._xml("xl/_rels/workbook.xml.rels")
        targets = {rel.get("Id"): rel.get("Target", "") for rel in rels}
        sheets = [
            (sheet.get("name", "?"), targets.get(sheet.get(f"{{{_REL}}}id")))
            for sheet in workbook.iter(f"{{{_MAIN}}}sheet")
        ]
        if not sheets or sheets[0][1] is None:
            raise WorkbookRejected("unreadable", "the workbook lists no worksheet")
        properties = workbook.find(f"{{{_MAIN}}}workbookPr")
        date1904 = properties is not None and properties.get("date1904") in ("1", "true")
        name, target = sheets[0]
        part = self._member(str(target))
        if part not in self._zip.NameToInfo:
            raise WorkbookRejected("unreadable", f"the first sheet's part {part} is missing")
        return name, part, [n for n, _ in sheets[1:]], date1904

    def _read_date_styles(self) -> frozenset[int]:
        if "xl/styles.xml" not in self._zip.NameToInfo:
            return frozenset()
        styles = self._xml("xl/styles.xml")
        custom = {
            int(fmt.get("numFmtId", "-1")): fmt.get("formatCode", "")
            for fmt in styles.iter(f"{{{_MAIN}}}numFmt")
        }
        cell_xfs = styles.find(f"{{{_MAIN}}}cellXfs")
        if cell_xfs is None:
            return frozenset()
        dates = set()
        for index, xf in enumerate(cell_xfs.iter(f"{{{_MAIN}}}xf")):
            number_format = int(xf.get("numFmtId", "0"))
            if number_format in _BUILTIN_DATE_FORMATS or (
                number_format in custom and _is_date_format(custom[number_format])
            ):
                dates.add(index)
        return frozenset(dates)

    def _shared_strings(self) -> SharedStrings:
        strings = SharedStrings()
        name = next(
            (
                n
                for n in ("xl/sharedStrings.xml", "xl/SharedStrings.xml")
                if n in self._zip.NameToInfo
            ),
            None,
        )
        if name is None:
            return strings
        self._check_prolog(name)
        with self._zip.open(name) as stream:
            pieces = BytePieces(stream, b"</si>", self.limits.max_cell_chars * 8, "a shared string")
            for piece in pieces:
                plain_found = None
                if not (b"&" in piece or b"<r>" in piece or b"<rPh" in piece or b"<t/>" in piece):
                    plain_found = _SHARED_STRING_BYTES.findall(piece)
                    if any(rich for _, rich in plain_found):
                        plain_found = None  # an <si> with more than one plain <t>
                if plain_found is None:
                    found = _SHARED_STRING.findall(piece.decode())
                    strings.extend(
                        [
                            (html.unescape(plain) if "&" in plain else plain)
                            if not rich
                            else rich_text(rich)
                            for plain, rich in found
                        ]
                    )
                else:
                    # Plain text needs no decoding: the UTF-8 bytes go to the table as they are.
                    strings.extend_utf8([plain for plain, _ in plain_found])
        return strings

    # -- reading ---------------------------------------------------------------------------------

    def date(self, serial: float) -> datetime:
        """An Excel serial date as a datetime, honouring the workbook's 1904 date system."""
        return (_EPOCH_1904 if self._date1904 else _EPOCH_1900) + timedelta(days=serial)

    @property
    def sheet_bytes(self) -> int:
        """The size of the first sheet's XML, inflated."""
        return self._zip.getinfo(self._part).file_size

    def reopen(self) -> None:
        """Open the file again: a forked process must not share the parent's file position."""
        self._zip = zipfile.ZipFile(self._zip.filename or "")

    def load_strings(self) -> None:
        """Read the shared-strings table (done by :meth:`rows` when needed)."""
        if self._strings is None:
            self._strings = self._shared_strings()

    def drop_strings(self) -> None:
        """Free the shared-strings table once no more rows will be read."""
        self._strings = None

    def part_rows(self, start_byte: int, stop_byte: int | None) -> Generator[Row, None, None]:
        """The rows of one part of the sheet, by position in the inflated XML, fast path only.

        Raises:
            FastPathUnsupported: the caller must read the whole sheet with :meth:`rows`.
        """
        self.load_strings()
        return self._fast_rows(start_byte, stop_byte)

    def rows(self) -> Iterator[Row]:
        """Every non-empty row of the first sheet, with its Excel row number.

        If the fast tokeniser gives up part-way, rows already yielded are not yielded again:
        the ElementTree reader resumes after the last row number seen.
        """
        self.load_strings()
        last = 0
        try:
            for row in self._fast_rows():
                last = row[0]
                yield row
        except FastPathUnsupported:
            for row in self._tree_rows():
                if row[0] > last:
                    yield row

    def _head(self, name: str, size: int = 65536) -> bytes:
        with self._zip.open(name) as stream:
            return stream.read(size)

    def _sheet_stream(self) -> IO[bytes]:
        self._check_prolog(self._part)
        return self._zip.open(self._part)

    def _value(self, kind: str, style: str, raw: str, inline: str, rich: str) -> Any:
        if kind == "s":
            assert self._strings is not None
            try:
                return self._strings[int(raw)]
            except (IndexError, ValueError):
                raise WorkbookRejected(
                    "unreadable", f"a cell refers to shared string {raw!r}, which does not exist"
                ) from None
        if kind in ("", "n"):
            if not raw:
                return None
            number = _number(raw)
            if style and int(style) in self._date_styles:
                return self.date(number)
            return number
        if kind == "inlineStr":
            return rich_text(rich) if rich else (html.unescape(inline) if "&" in inline else inline)
        if kind == "b":
            return raw == "1" if raw else None
        return (html.unescape(raw) if "&" in raw else raw) if raw else None

    def _fast_rows(  # noqa: C901 - the hot loop, kept flat on purpose
        self, start_byte: int = 0, stop_byte: int | None = None
    ) -> Generator[Row, None, None]:
        # The hot loop of validation. It works on bytes: a shared-string index, a number or a
        # column letter is ASCII and never needs decoding; only text values are decoded.
        findall = _FAST_CELL.findall
        strings = self._strings
        assert strings is not None
        buffer, ends = strings.buffer, strings.ends
        string_count = len(ends) - 1
        column_of = _BYTE_COLUMNS.get
        value_of = self._value
        date_styles = self._date_styles
        max_chars = self.limits.max_cell_chars
        current = b""
        values: list[Any] = []
        total = self._zip.getinfo(self._part).file_size
        with self._sheet_stream() as stream:
            head = self._head(self._part, 4096).decode("utf-8", "replace")
            if re.search(r"<\w+:(worksheet|sheetData|row|c)[\s>]", head):
                raise FastPathUnsupported("namespace prefix")
            pieces = BytePieces(stream, b"</row>", self.limits.max_row_bytes, "a row")
            for piece in pieces:
                # Pieces are cut the same way in every process, so parts never overlap.
                if pieces.position <= start_byte:
                    continue
                if stop_byte is not None and pieces.position > stop_byte:
                    break
                if self._progress is not None:
                    self._progress(pieces.position - start_byte, (stop_byte or total) - start_byte)
                cells = findall(piece)
                if piece.count(b"<c ") + piece.count(b"<c>") + piece.count(b"<c/") != len(cells):
                    raise FastPathUnsupported("cell tags the tokeniser does not understand")
                for letters, number, style, kind, raw, inline, rich in cells:
                    if number != current:
                        if values and _has_content(values):
                            yield int(current), values
                        current, values = number, []
                        _row_number(int(number))
                    column = column_of(letters)
                    if column is None:
                        column = _BYTE_COLUMNS[letters] = _column(letters.decode())
                    if column != len(values):
                        if column < len(values):
                            raise FastPathUnsupported("cells out of order")
                        values.extend([None] * (column - len(values)))
                    if kind == b"s":
                        index = int(raw)
                        if index >= string_count:
                            raise WorkbookRejected(
                                "unreadable",
                                f"cell {letters.decode()}{number.decode()} refers to shared "
                                f"string {index}, which does not exist",
                            )
                        values.append(buffer[ends[index] : ends[index + 1] - 1].decode())
                    elif not kind or kind == b"n":
                        if not raw:
                            values.append(None)
                            continue
                        value: Any = int(raw) if raw.isdigit() else _number(raw.decode())
                        if style and int(style) in date_styles:
                            value = self.date(value)
                        values.append(value)
                    elif kind == b"inlineStr" and not rich and b"&" not in inline:
                        text = inline.decode()
                        if len(text) > max_chars:
                            raise WorkbookRejected(
                                "cell_too_long",
                                f"cell {letters.decode()}{number.decode()} holds more text than "
                                "Excel allows (32,767 characters)",
                            )
                        values.append(text)
                    else:
                        values.append(
                            value_of(
                                kind.decode(),
                                style.decode(),
                                raw.decode(),
                                inline.decode(),
                                rich.decode(),
                            )
                        )
        if values and _has_content(values):
            yield int(current), values

    def _tree_rows(self) -> Iterator[Row]:
        """The robust path: ElementTree, any prefix, cells with or without ``r``."""
        number = 0
        with self._sheet_stream() as stream:
            try:
                for _, element in ElementTree.iterparse(stream, events=("end",)):
                    if element.tag.rpartition("}")[2] != "row":
                        continue
                    given = element.get("r")
                    number = _row_number(int(given) if given else number + 1)
                    values = self._tree_cells(element)
                    element.clear()
                    if any(v is not None and v != "" for v in values):
                        yield number, values
            except ElementTree.ParseError as exc:
                raise WorkbookRejected("unreadable", f"the sheet is not valid XML: {exc}") from None

    def _tree_cells(self, row: ElementTree.Element) -> list[Any]:
        values: list[Any] = []
        for cell in row:
            if cell.tag.rpartition("}")[2] != "c":
                continue
            reference = cell.get("r")
            if reference:
                column = _column(reference.rstrip("0123456789")[:8])
                values.extend([None] * (column - len(values)))
            raw = inline = ""
            for child in cell:
                local = child.tag.rpartition("}")[2]
                if local == "v":
                    raw = child.text or ""
                elif local == "is":
                    inline = "".join(
                        t.text or ""
                        for t in child.iter()
                        if t.tag.rpartition("}")[2] == "t" and not _inside_phonetic(child, t)
                    )
            kind = cell.get("t") or ""
            values.append(
                self._value(
                    kind if kind != "inlineStr" else "inlineStr",
                    cell.get("s") or "",
                    raw,
                    inline,
                    "",
                )
            )
        return values

    def close(self) -> None:
        self._zip.close()


def _inside_phonetic(root: ElementTree.Element, target: ElementTree.Element) -> bool:
    for phonetic in root:
        if phonetic.tag.rpartition("}")[2] == "rPh" and any(t is target for t in phonetic.iter()):
            return True
    return False
