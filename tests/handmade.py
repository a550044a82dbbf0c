"""Workbooks written by hand, part by part, in the style of the Open XML SDK.

The SDK (and the .NET tools built on it) binds a prefix to the SpreadsheetML namespace on every
part (``<x:worksheet xmlns:x="…/main">``, ``<x:c r="A1">``) and uses absolute relationship
targets. No Python writer does that, so these packages are built here with zipfile; with
``prefix=""`` the same package is spelt as Excel spells it, for comparison.
"""

from __future__ import annotations

import io
import zipfile
from datetime import datetime
from xml.sax.saxutils import escape

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PACKAGE = "http://schemas.openxmlformats.org/package/2006/relationships"
TYPES = "http://schemas.openxmlformats.org/package/2006/content-types"
DECLARATION = '<?xml version="1.0" encoding="utf-8"?>'
_EPOCH = datetime(1899, 12, 30)  # noqa: DTZ001 - Excel dates have no time zone


class Rich:
    """A shared string of rich-text runs, with a phonetic run that is not part of its text."""

    def __init__(self, *runs: str) -> None:
        self.runs = runs


class Inline:
    """A string stored in the cell (t="inlineStr"), not in the shared-strings table."""

    def __init__(self, text: str) -> None:
        self.text = text


def column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


class Package:
    """The parts of a workbook, spelt with ``prefix`` (e.g. "x"; "" for Excel's spelling)."""

    def __init__(self, prefix: str = "x") -> None:
        self.p = f"{prefix}:" if prefix else ""
        self.xmlns = f"xmlns:{prefix}" if prefix else "xmlns"
        self.strings: list[str] = []  # the <si> elements, as XML

    def _shared(self, xml: str) -> int:
        self.strings.append(xml)
        return len(self.strings) - 1

    def cell(self, reference: str, value: object) -> str:
        p = self.p
        if value is None:
            return ""
        if isinstance(value, Inline):
            text = f"<{p}is><{p}t>{escape(value.text)}</{p}t></{p}is>"
            return f'<{p}c r="{reference}" t="inlineStr">{text}</{p}c>'
        if isinstance(value, Rich):
            runs = "".join(
                f"<{p}r><{p}rPr><{p}b/></{p}rPr><{p}t>{escape(run)}</{p}t></{p}r>"
                for run in value.runs
            )
            ruby = f'<{p}rPh sb="0" eb="1"><{p}t>ruby</{p}t></{p}rPh>'
            index = self._shared(f"<{p}si>{runs}{ruby}</{p}si>")
            return f'<{p}c r="{reference}" t="s"><{p}v>{index}</{p}v></{p}c>'
        if isinstance(value, str):
            index = self._shared(f"<{p}si><{p}t>{escape(value)}</{p}t></{p}si>")
            return f'<{p}c r="{reference}" t="s"><{p}v>{index}</{p}v></{p}c>'
        if isinstance(value, bool):
            return f'<{p}c r="{reference}" t="b"><{p}v>{int(value)}</{p}v></{p}c>'
        if isinstance(value, datetime):
            serial = (value - _EPOCH).total_seconds() / 86400
            return f'<{p}c r="{reference}" s="1"><{p}v>{serial!r}</{p}v></{p}c>'
        return f'<{p}c r="{reference}"><{p}v>{value!r}</{p}v></{p}c>'

    def rows_xml(self, rows: list[list[object]], *, spans: str = "") -> str:
        """<row> elements for ``rows`` (from row 1), with ``spans=`` on each if given."""
        p = self.p
        out = []
        for number, row in enumerate(rows, start=1):
            cells = "".join(
                self.cell(f"{column_letters(i)}{number}", value) for i, value in enumerate(row)
            )
            attributes = f' r="{number}"' + (f' spans="{spans}"' if spans else "")
            out.append(f"<{p}row{attributes}>{cells}</{p}row>")
        return "".join(out)

    def parts(self, sheet_data: str) -> dict[str, str]:
        """Every part of the package, with ``sheet_data`` inside <sheetData>."""
        p, xmlns = self.p, self.xmlns
        types = "application/vnd.openxmlformats-officedocument.spreadsheetml"
        return {
            "[Content_Types].xml": DECLARATION
            + f'<{p}Types {xmlns}="{TYPES}">'
            + f'<{p}Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            + f'<{p}Default Extension="xml" ContentType="application/xml"/>'
            + f'<{p}Override PartName="/xl/workbook.xml" ContentType="{types}.sheet.main+xml"/>'
            + f'<{p}Override PartName="/xl/worksheets/sheet1.xml" '
            f'ContentType="{types}.worksheet+xml"/>'
            + f'<{p}Override PartName="/xl/styles.xml" ContentType="{types}.styles+xml"/>'
            + f'<{p}Override PartName="/xl/sharedStrings.xml" '
            f'ContentType="{types}.sharedStrings+xml"/>' + f"</{p}Types>",
            # The relationship parts are in another namespace: their prefix is not the main one.
            "_rels/.rels": DECLARATION
            + f'<{p}Relationships {xmlns}="{PACKAGE}">'
            + f'<{p}Relationship Type="{REL}/officeDocument" Target="/xl/workbook.xml" Id="R0"/>'
            + f"</{p}Relationships>",
            "xl/workbook.xml": DECLARATION
            + f'<{p}workbook xmlns:r="{REL}" {xmlns}="{MAIN}">'
            + f"<{p}workbookPr/><{p}sheets>"
            + f'<{p}sheet name="calls" sheetId="1" r:id="R1"/>'
            + f'<{p}sheet name="notes" sheetId="2" r:id="R2"/>'
            + f"</{p}sheets></{p}workbook>",
            "xl/_rels/workbook.xml.rels": DECLARATION
            + f'<{p}Relationships {xmlns}="{PACKAGE}">'
            + f'<{p}Relationship Type="{REL}/worksheet" Target="/xl/worksheets/sheet1.xml" '
            'Id="R1"/>'
            + f'<{p}Relationship Type="{REL}/worksheet" Target="/xl/worksheets/sheet2.xml" '
            'Id="R2"/>'
            + f'<{p}Relationship Type="{REL}/styles" Target="/xl/styles.xml" Id="R3"/>'
            + f'<{p}Relationship Type="{REL}/sharedStrings" Target="/xl/sharedStrings.xml" '
            'Id="R4"/>' + f"</{p}Relationships>",
            "xl/styles.xml": DECLARATION
            + f'<{p}styleSheet {xmlns}="{MAIN}">'
            + f'<{p}numFmts count="1"><{p}numFmt numFmtId="164" '
            f'formatCode="yyyy-mm-dd hh:mm:ss"/></{p}numFmts>'
            + f'<{p}fonts count="1"><{p}font/></{p}fonts>'
            + f'<{p}fills count="1"><{p}fill/></{p}fills>'
            + f'<{p}borders count="1"><{p}border/></{p}borders>'
            + f'<{p}cellXfs count="2"><{p}xf numFmtId="0"/>'
            + f'<{p}xf numFmtId="164" applyNumberFormat="1"/></{p}cellXfs>'
            + f"</{p}styleSheet>",
            "xl/sharedStrings.xml": DECLARATION
            + f'<{p}sst {xmlns}="{MAIN}" count="{len(self.strings)}" '
            f'uniqueCount="{len(self.strings)}">' + "".join(self.strings) + f"</{p}sst>",
            "xl/worksheets/sheet1.xml": DECLARATION
            + f'<{p}worksheet xmlns:r="{REL}" {xmlns}="{MAIN}">'
            + f'<{p}sheetViews><{p}sheetView workbookViewId="0"/></{p}sheetViews>'
            + f"<{p}sheetData>{sheet_data}</{p}sheetData></{p}worksheet>",
            "xl/worksheets/sheet2.xml": DECLARATION
            + f'<{p}worksheet {xmlns}="{MAIN}"><{p}sheetData/></{p}worksheet>',
        }


def zipped(parts: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in parts.items():
            archive.writestr(name, text.encode())
    return out.getvalue()


def workbook(rows: list[list[object]], *, prefix: str = "x", spans: str = "") -> bytes:
    """A package whose first sheet holds ``rows`` from row 1, spelt with ``prefix``."""
    package = Package(prefix)
    sheet_data = package.rows_xml(rows, spans=spans)
    return zipped(package.parts(sheet_data))


def with_sheet_data(sheet_data: str, *, prefix: str = "x", tree: bool = False) -> bytes:
    """A package whose first sheet's <sheetData> holds exactly ``sheet_data``.

    With ``tree``, the sheet's root binds the main namespace twice (valid XML, which the fast
    path leaves to the ElementTree reader).
    """
    parts = Package(prefix).parts(sheet_data)
    if tree:
        sheet = parts["xl/worksheets/sheet1.xml"]
        parts["xl/worksheets/sheet1.xml"] = sheet.replace(
            " xmlns:r=", f' xmlns:y="{MAIN}" xmlns:r=', 1
        )
    return zipped(parts)
