"""How a part of a workbook is written: its prolog, the prefix of its tags, its cell references.

What the fast tokeniser must know before it reads a part with regular expressions:

- The prolog holds no DTD (:func:`prolog_verdict`), and neither does the rest of the part
  (:func:`has_dtd`): the tokeniser would not see a declaration as one.
- How the part spells the main namespace. Excel writes ``<worksheet xmlns="…/main">``; the
  Open XML SDK and the .NET tools built on it write ``<x:worksheet xmlns:x="…/main">`` and
  ``<x:c r="A1">`` on every part. :func:`markup_of` takes the prefix the root element binds to
  the main namespace and returns the patterns compiled for that prefix (:func:`markup_for`,
  cached), not patterns that allow any prefix: ``<y:c>`` with ``y`` bound elsewhere is not a
  cell. A root in another namespace, or one that binds the main namespace twice, gets None:
  the ElementTree reader, which resolves namespaces itself, reads that part.
- Cell references: inside Excel's grid (:func:`column_index`), and in order, rows and cells
  each once (:func:`refuse_row`, :func:`refuse_cell` word the verdict for both readers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NoReturn

from watcher.errors import WorkbookRejected


class FastPathUnsupported(Exception):  # noqa: N818
    """The fast tokeniser met XML it does not understand; use the ElementTree reader."""


_ENTITY = re.compile(r"&(?:(lt|gt|amp|quot|apos)|#([0-9]{1,7})|#x([0-9A-Fa-f]{1,6}));")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _xml_char(code: int) -> bool:
    return (
        code in (0x9, 0xA, 0xD)
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


def _entity(match: re.Match[str]) -> str:
    name, decimal, hexadecimal = match.groups()
    if name:
        return _NAMED[name]
    code = int(decimal) if decimal else int(hexadecimal, 16)
    if not _xml_char(code):
        raise FastPathUnsupported(f"&#{code}; is not an XML character")
    return chr(code)


def xml_text(text: str) -> str:
    """``text`` with XML's entities replaced, as an XML parser reads them: the five named ones
    and character references. Anything else (an HTML entity such as ``&nbsp;``, a reference
    without its ``;``, ``&#0;``) is left to the XML parser, which refuses it.

    Raises:
        FastPathUnsupported: the text holds what only the XML parser may judge.
    """
    if "&" not in text:
        return text
    if "&" in _ENTITY.sub("", text):
        raise FastPathUnsupported("an entity XML does not define")
    return _ENTITY.sub(_entity, text)


__all__ = (
    "MAIN",
    "MAX_COLUMN",
    "MAX_ROW",
    "FastPathUnsupported",
    "Markup",
    "column_index",
    "has_dtd",
    "markup_for",
    "markup_of",
    "prolog_verdict",
    "refuse_cell",
    "refuse_dtd",
    "refuse_row",
    "root_tag",
    "xml_text",
)

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_MAIN_BYTES = MAIN.encode()
MAX_COLUMN = 16_384  # XFD: Excel's grid ends there
MAX_ROW = 1_048_576

_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_START_TAG = re.compile(rb"""<([^\s/>]+)((?:\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*/?>""")
_ATTRIBUTE = re.compile(rb"""([^\s=/>]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_PREFIX = re.compile(rb"[A-Za-z_][\w.-]{0,63}")
_LETTERS = re.compile(r"[A-Z]{1,3}")
_COLUMNS: dict[str, int] = {}  # column letters to index, filled as letters are met


# -- the prolog ----------------------------------------------------------------------------------


def prolog_verdict(data: bytes) -> tuple[str | None, int]:
    """What the prolog holds, and where the verdict was reached.

    The verdict is "root" once the root element starts (at the offset returned), "dtd" at a
    DTD, "utf16" (which Excel never writes, and where a DTD could hide from a byte search), or
    None while more bytes are needed.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or data[1:2] == b"\x00":
        return "utf16", 0
    at = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    while True:
        while at < len(data) and data[at : at + 1].isspace():
            at += 1
        if len(data) - at < 9:
            return None, at
        if data.startswith(b"<?", at):
            closing = b"?>"
        elif data.startswith(b"<!--", at):
            closing = b"-->"
        elif data.startswith(b"<!", at):
            return "dtd", at
        else:
            return "root", at  # an element (or text, which the parser refuses)
        end = data.find(closing, at + 2)
        if end < 0:
            return None, at
        at = end + len(closing)


def has_dtd(data: bytes) -> bool:
    """Whether ``data`` declares a DTD or an entity (anywhere, not only in a prolog)."""
    return b"!" in data and _DTD.search(data) is not None  # "!" alone: a memchr, cheap


def refuse_dtd(name: str) -> NoReturn:
    """Refuse part ``name`` for declaring a DTD or entities."""
    raise WorkbookRejected(
        "xml_dtd", f"{name} declares a DTD or entities, which Excel never writes (an XML bomb?)"
    )


def root_tag(data: bytes, at: int) -> re.Match[bytes] | None:
    """The root element's start tag at ``at``, or None while it is incomplete (or malformed)."""
    return _START_TAG.match(data, at)


# -- the prefix ----------------------------------------------------------------------------------


def _namespaces(attributes: bytes) -> dict[bytes, bytes] | None:
    """The prefixes a start tag binds (b"" for the default); None if one is bound twice."""
    bound: dict[bytes, bytes] = {}
    for attribute in _ATTRIBUTE.finditer(attributes):
        name = attribute[1]
        if name != b"xmlns" and not name.startswith(b"xmlns:"):
            continue
        prefix = name[6:]
        if prefix in bound:
            return None  # not well-formed: the parser says so
        bound[prefix] = attribute[2] if attribute[2] is not None else attribute[3]
    return bound


def markup_of(tag: re.Match[bytes]) -> Markup | None:
    """The patterns for a part whose root start tag is ``tag``, or None if the fast path must
    leave the part to the ElementTree reader.

    The root must be in the main namespace through a prefix (or the default namespace) that
    nothing else on it binds to the main namespace too. A root in no namespace at all (no
    ``xmlns``, as a few writers leave it) is read as before, unprefixed.
    """
    prefix, _, _ = tag[1].rpartition(b":")
    bound = _namespaces(tag[2])
    if bound is None:
        return None
    mains = {name for name, uri in bound.items() if uri == _MAIN_BYTES}
    in_main = mains == {prefix}
    in_none = not prefix and b"" not in bound and not mains
    if not (in_main or in_none) or (prefix and not _PREFIX.fullmatch(prefix)):
        return None
    return markup_for(prefix + b":" if prefix else b"")


@dataclass(frozen=True, slots=True)
class Markup:
    """The fast path's patterns and tags for one spelling of the main namespace.

    ``prefix`` is b"" or the prefix with its colon (b"x:"); every tag below carries it.
    """

    prefix: bytes
    cell: re.Pattern[bytes]  # a cell and its value; groups as in ``SheetReader._fast_rows``
    plain_cell: re.Pattern[bytes]  # the common cells only, faster; the same groups
    cell_open: bytes  # counts every cell tag, and a few others (<cols>): a quick guard
    cell_tags: tuple[bytes, ...]  # counts exactly the cell tags
    row_open: bytes
    row_with_cell: re.Pattern[bytes]  # a row element whose first child is a cell
    row_end: bytes
    sheet_data_end: bytes
    string_tags: tuple[bytes, ...]
    string_end: bytes  # counts the <si> elements that are not empty: a quick guard
    plain_string: re.Pattern[bytes]  # an <si> of one plain <t>, its text as UTF-8 bytes
    string_open: bytes  # starts every <si> element, and nothing else in the part
    strings: re.Pattern[str]  # any <si>: plain, or runs for rich_text
    run_text: re.Pattern[str]
    phonetic: re.Pattern[str]
    phonetic_open: str

    def rich_text(self, inner: str) -> str:
        """The text of rich-text runs, without the phonetic (ruby) runs."""
        if self.phonetic_open in inner:
            inner = self.phonetic.sub("", inner)
        return xml_text("".join(self.run_text.findall(inner)))

    def inline_text(self, plain: bytes, rich: bytes) -> str:
        """The text of an inline string, from the groups of :attr:`cell`."""
        if rich:
            return self.rich_text(rich.decode())
        return xml_text(plain.decode())

    def counts_cells(self, piece: bytes, cells: int) -> bool:
        """Whether ``piece`` holds exactly ``cells`` cell tags."""
        return sum(piece.count(tag) for tag in self.cell_tags) == cells

    def counts_rows(self, piece: bytes, rows: int) -> bool:
        """Whether ``piece`` holds exactly ``rows`` row elements that hold cells."""
        return len(self.row_with_cell.findall(piece)) == rows

    def counts_strings(self, piece: bytes, strings: int) -> bool:
        """Whether ``piece`` holds exactly ``strings`` <si> elements."""
        return sum(piece.count(tag) for tag in self.string_tags) == strings


# The fast path's patterns, with "@" where the prefix goes (no pattern uses "@" otherwise).
_CELL = (
    rb'<@c r="([A-Z]{1,3})(\d{1,7})"(?: s="(\d+)")?(?: t="([a-zA-Z]+)")?(?: [a-zA-Z:]+="[^"]*")*'
    rb"(?:/>|>(?:<@f>[^<]*</@f>|<@f [^>]*/>|<@f [^>]*>[^<]*</@f>)?"
    rb'(?:<@v>([^<]*)</@v>|<@is><@t(?: xml:space="preserve")?>([^<]*)</@t></@is>'
    rb"|<@is>((?:[^<]|<(?!/?@is>|@c[\s/>]))*)</@is>)?"  # never past another cell: linear
    rb"</@c>)"
)
# The cells most writers write, a third faster to find: a value, an inline string or nothing,
# and no other attribute. Where it takes every cell of a piece, _CELL takes them alike; a piece
# holding any other cell is read again with _CELL.
_PLAIN_CELL = (
    rb'<@c r="([A-Z]{1,3})(\d{1,7})"(?: s="(\d+)")?(?: t="([a-zA-Z]+)")?'
    rb"(?:>(?:<@v>([^<]*)</@v>|<@is><@t>([^<]*)</@t></@is>)</@c>|/>)()"
)
_ROW_WITH_CELL = rb"<@row\b[^<>]*>\s*<@c[\s/>]"  # no "<" in a tag: each search is short
_STRING = (
    rb'<@si><@t(?: xml:space="preserve")?>([^<]*)</@t></@si>'
    rb"|<@si>((?:[^<]|<(?!/?@si[\s/>]))*)</@si>|<@si/>"  # never past another <si: linear
)
_PLAIN_STRING = rb'<@si><@t(?: xml:space="preserve")?>([^<]*)</@t></@si>'
_RUN_TEXT = (
    r"""<@t(?:\s+[^\s=>]+\s*=\s*(?:"[^"]*"|'[^']*'))*\s*>([^<]*)</@t>"""  # ">" in a value too
)
_PHONETIC = r"<@rPh\b.*?</@rPh>"


@lru_cache(maxsize=16)  # a few spellings exist; a hostile stream of prefixes must not grow it
def markup_for(prefix: bytes) -> Markup:
    """The patterns for tags spelt with ``prefix`` (b"" or e.g. b"x:")."""
    escaped = re.escape(prefix)
    text = escaped.decode()

    def tags(*templates: bytes) -> tuple[bytes, ...]:
        return tuple(template.replace(b"@", prefix) for template in templates)

    def pattern(template: bytes) -> re.Pattern[bytes]:
        return re.compile(template.replace(b"@", escaped), re.S)

    return Markup(
        prefix=prefix,
        cell=pattern(_CELL),
        plain_cell=pattern(_PLAIN_CELL),
        cell_open=tags(b"<@c")[0],
        cell_tags=tags(b"<@c ", b"<@c>", b"<@c/"),
        row_open=tags(b"<@row")[0],
        row_with_cell=pattern(_ROW_WITH_CELL),
        row_end=tags(b"</@row>")[0],
        sheet_data_end=tags(b"</@sheetData>")[0],
        string_tags=tags(b"<@si>", b"<@si/", b"<@si "),
        string_end=tags(b"</@si>")[0],
        plain_string=pattern(_PLAIN_STRING),
        string_open=tags(b"<@si")[0],
        strings=re.compile(_STRING.decode().replace("@", text), re.S),
        run_text=re.compile(_RUN_TEXT.replace("@", text)),
        phonetic=re.compile(_PHONETIC.replace("@", text), re.S),
        phonetic_open=f"<{prefix.decode()}rPh",
    )


# -- cell references -----------------------------------------------------------------------------


def column_index(letters: str) -> int:
    """The index of column ``letters``; a reference outside Excel's grid is refused, never padded
    (column ZZZZZZ would otherwise make a row of 300 million empty cells)."""
    index = _COLUMNS.get(letters)
    if index is None:
        index = 0
        for char in letters[:8]:
            index = index * 26 + ord(char) - 64
        if not _LETTERS.fullmatch(letters) or index > MAX_COLUMN:
            raise WorkbookRejected(
                "unreadable",
                f"a cell refers to column {letters[:10]!r}, outside Excel's grid (A to XFD)",
            )
        index = _COLUMNS[letters] = index - 1
    return index


def refuse_row(previous: int, row: int) -> NoReturn:
    """Refuse row ``row`` after row ``previous``: outside the grid, repeated or out of order."""
    if not 1 <= row <= MAX_ROW:
        raise WorkbookRejected(
            "unreadable", f"a row is numbered {row:,}, outside Excel's grid (1 to 1,048,576)"
        )
    if row == previous:
        raise WorkbookRejected(
            "unreadable", f"row {row:,} appears twice; Excel writes each row once, in order"
        )
    raise WorkbookRejected(
        "unreadable", f"row {row:,} comes after row {previous:,}; Excel writes rows in order"
    )


def refuse_cell(reference: str, repeated: bool) -> NoReturn:
    """Refuse a cell that repeats the one before it in its row, or stands left of it."""
    how = "appears twice" if repeated else "comes after a cell to its right"
    raise WorkbookRejected(
        "unreadable", f"cell {reference} {how}; Excel writes each cell once, in order"
    )
