"""A corpus of broken and hostile workbooks, each made by code from a real writer's output."""

from __future__ import annotations

import io
import re
import secrets
import shutil
import subprocess
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import msoffcrypto.format.ooxml
import xlsxwriter
import xlwt

from tests.workbooks import HEADER, openpyxl_bytes, rows_valid, xlsxwriter_bytes

GOOD = xlsxwriter_bytes(rows_valid(5))


def rezip(
    data: bytes,
    *,
    replace: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
) -> bytes:
    """Copy a ZIP, replacing, adding or dropping members."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            if info.filename in drop:
                continue
            body = (replace or {}).get(info.filename, source.read(info.filename))
            target.writestr(info.filename, body)
        for name, body in (add or {}).items():
            target.writestr(name, body)
    return out.getvalue()


def member(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(name)


def raw_sheet(rows_xml: str, *, prefix: str = "", shared: bytes | None = None) -> bytes:
    """A workbook whose first sheet is exactly the XML given (inside <sheetData>)."""
    p = f"{prefix}:" if prefix else ""
    ns = f'xmlns{":" + prefix if prefix else ""}="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    sheet = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f"<{p}worksheet {ns}><{p}sheetData>{rows_xml}</{p}sheetData></{p}worksheet>"
    )
    replace = {"xl/worksheets/sheet1.xml": sheet.encode()}
    if shared is not None:
        replace["xl/sharedStrings.xml"] = shared
    return rezip(GOOD, replace=replace)


def inline_row(number: int, *cells: str, prefix: str = "", with_r: bool = True) -> str:
    p = f"{prefix}:" if prefix else ""
    parts = []
    for i, text in enumerate(cells):
        ref = f' r="{chr(65 + i)}{number}"' if with_r else ""
        parts.append(f'<{p}c{ref} t="inlineStr"><{p}is><{p}t>{text}</{p}t></{p}is></{p}c>')
    row_ref = f' r="{number}"' if with_r else ""
    return f"<{p}row{row_ref}>{''.join(parts)}</{p}row>"


def _xlsxwriter(build: Callable[[xlsxwriter.Workbook, object], None], **options: object) -> bytes:
    out = io.BytesIO()
    book = xlsxwriter.Workbook(out, {"in_memory": True, **options})
    build(book, book.add_worksheet())
    book.close()
    return out.getvalue()


def xls_file() -> bytes:
    book = xlwt.Workbook()
    sheet = book.add_sheet("calls")
    for col, name in enumerate(HEADER):
        sheet.write(0, col, name)
    sheet.write(1, 1, '[{"calledNo":"13800138000"}]')
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def encrypted_file() -> bytes:
    source = msoffcrypto.format.ooxml.OOXMLFile(io.BytesIO(GOOD))
    out = io.BytesIO()
    source.encrypt("secret", out)
    return out.getvalue()


def libreoffice_file(rows: list[list[object]]) -> bytes:
    """The list opened and saved again by LibreOffice Calc (a different real writer)."""
    soffice = shutil.which("soffice")
    assert soffice, (
        "LibreOffice is not installed: run .ci/run or apt-get install libreoffice-calc-nogui"
    )
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.xlsx"
        source.write_bytes(xlsxwriter_bytes(rows))
        out = Path(folder) / "out"
        subprocess.run(
            [
                soffice,
                f"-env:UserInstallation=file://{folder}/profile",
                "--headless",
                "--convert-to",
                "xlsx:Calc MS Excel 2007 XML",
                "--outdir",
                str(out),
                str(source),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return (out / "in.xlsx").read_bytes()


def _billion_laughs() -> bytes:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    sheet = (
        f'<?xml version="1.0"?><!DOCTYPE lolz [{entities}]>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        '<sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>&lol9;</t></is></c></row>'
        "</sheetData></worksheet>"
    )
    return rezip(GOOD, replace={"xl/worksheets/sheet1.xml": sheet.encode()})


def _external_entity() -> bytes:
    shared = member(GOOD, "xl/sharedStrings.xml").decode()
    shared = shared.replace("?>", '?><!DOCTYPE sst [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', 1)
    shared = shared.replace("<t>sessionId</t>", "<t>&xxe;</t>", 1)
    return rezip(GOOD, replace={"xl/sharedStrings.xml": shared.encode()})


def _dtd_after_a_long_comment() -> bytes:
    """The DOCTYPE behind 70 KB of comment: a check of the first 64 KiB misses it."""
    shared = member(GOOD, "xl/sharedStrings.xml").decode()
    hidden = "<!--" + "x" * 70_000 + '--><!DOCTYPE sst [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    shared = shared.replace("?>", "?>" + hidden, 1)
    shared = shared.replace("<t>sessionId</t>", "<t>&xxe;</t>", 1)
    return rezip(GOOD, replace={"xl/sharedStrings.xml": shared.encode()})


def _dtd_behind_a_bom() -> bytes:
    sheet = member(GOOD, "xl/worksheets/sheet1.xml").decode()
    sheet = sheet.replace("?>", '?><!DOCTYPE w [<!ENTITY a "b">]>', 1)
    return rezip(GOOD, replace={"xl/worksheets/sheet1.xml": b"\xef\xbb\xbf" + sheet.encode()})


def _odd_member(name: str) -> Callable[[], bytes]:
    return lambda: rezip(GOOD, add={name: b"<x/>"})


def _duplicate_member() -> bytes:
    out = io.BytesIO(GOOD)
    with zipfile.ZipFile(out, "a") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate: that is the point
        archive.writestr("xl/worksheets/sheet1.xml", b"<worksheet/>")
    return out.getvalue()


def _many_members() -> bytes:
    return rezip(GOOD, add={f"xl/media/m{i}.bin": b"" for i in range(10_001)})


def _beyond_the_grid(reference: str, row: int) -> Callable[[], bytes]:
    """A header row, then one cell far outside Excel's grid (a 1 KB file asking for GBs)."""

    def make() -> bytes:
        cell = f'<c r="{reference}" t="inlineStr"><is><t>x</t></is></c>'
        return raw_sheet(inline_row(1, "sessionId", "called") + f'<row r="{row}">{cell}</row>')

    return make


def _zip_bomb() -> bytes:
    return rezip(GOOD, add={"xl/media/padding.bin": b"\0" * 60_000_000})


def _truncated_member() -> bytes:
    sheet = member(GOOD, "xl/worksheets/sheet1.xml")
    return rezip(GOOD, replace={"xl/worksheets/sheet1.xml": sheet[: len(sheet) // 2]})


def _bad_crc() -> bytes:
    data = bytearray(rezip(GOOD))
    start = data.find(b"xl/worksheets/sheet1.xml") + 40  # inside the deflated sheet
    data[start] ^= 0xFF
    return bytes(data)


def _header_cells() -> str:
    return inline_row(1, *HEADER[:2])


def _huge_rows(count: int) -> bytes:
    body = "".join(inline_row(n, f"s{n}", f'[{{"calledNo":"{n}"}}]') for n in range(2, count + 2))
    return raw_sheet(_header_cells() + body)


def _dates(date1904: bool) -> bytes:
    def build(book: xlsxwriter.Workbook, sheet: object) -> None:
        stamp = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        sheet.write_row(0, 0, HEADER)  # type: ignore[attr-defined]
        for i in range(3):
            sheet.write_string(i + 1, 1, f'[{{"calledNo":"1390000000{i}"}}]')  # type: ignore[attr-defined]
            when = datetime(2026, 3, 1 + i, 18)  # noqa: DTZ001 - Excel dates have no zone
            sheet.write_datetime(i + 1, 5, when, stamp)  # type: ignore[attr-defined]

    return _xlsxwriter(build, date_1904=date1904)


def _formulas() -> bytes:
    def build(book: xlsxwriter.Workbook, sheet: object) -> None:
        sheet.write_row(0, 0, HEADER)  # type: ignore[attr-defined]
        sheet.write_formula(
            1,
            1,
            '="[{""calledNo"":""13800138000""}]"',
            None,  # type: ignore[attr-defined]
            '[{"calledNo":"13800138000"}]',
        )
        sheet.write_formula(1, 2, "=95000+555", None, 95555)  # type: ignore[attr-defined]

    return _xlsxwriter(build)


def _rich() -> bytes:
    def build(book: xlsxwriter.Workbook, sheet: object) -> None:
        bold = book.add_format({"bold": True})
        sheet.write_row(0, 0, HEADER)  # type: ignore[attr-defined]
        sheet.write_rich_string(1, 1, '[{"calledNo":"', bold, "13800138000", '"}]')  # type: ignore[attr-defined]

    return _xlsxwriter(build)


def _float_phone() -> bytes:
    rows = rows_valid(2)
    rows[0][2] = 13800138000.0  # caller stored as a number
    return openpyxl_bytes(rows)


def _second_sheet() -> bytes:
    def build(book: xlsxwriter.Workbook, sheet: object) -> None:
        data = book.add_worksheet("data")
        data.write_row(0, 0, HEADER)
        data.write_row(1, 0, rows_valid(1)[0])

    return _xlsxwriter(build)


def _chinese() -> bytes:
    rows = rows_valid(3)
    rows[0][3] = '{"姓名":"李雷","地址":"北京市海淀区"}'
    rows[1][4] = "贵宾客户"
    return xlsxwriter_bytes(rows)


# (name, maker, expected): expected is a problem kind, or "valid"
CASES: list[tuple[str, Callable[[], bytes], str]] = [
    ("not_a_zip", lambda: b"sessionId,called\n1,[{}]\n", "not_xlsx"),
    ("empty_file", lambda: b"", "not_xlsx"),
    ("truncated_zip", lambda: GOOD[: len(GOOD) * 2 // 3], "not_xlsx"),
    ("zip_without_workbook", lambda: rezip(GOOD, drop=("xl/workbook.xml",)), "not_xlsx"),
    ("xls_renamed", xls_file, "old_xls"),
    ("encrypted", encrypted_file, "encrypted"),
    (
        "xlsm_with_macros",
        lambda: rezip(GOOD, add={"xl/vbaProject.bin": b"\xd0\xcf\x11\xe0fake"}),
        "macros",
    ),
    (
        "external_links",
        lambda: rezip(GOOD, add={"xl/externalLinks/externalLink1.xml": b"<x/>"}),
        "external_links",
    ),
    ("zip_bomb_ratio", _zip_bomb, "too_large"),
    ("billion_laughs", _billion_laughs, "xml_dtd"),
    ("dtd_after_a_70_kb_comment", _dtd_after_a_long_comment, "xml_dtd"),
    ("column_zzzzzz", _beyond_the_grid("ZZZZZZ2", 2), "unreadable"),
    ("column_xfe", _beyond_the_grid("XFE2", 2), "unreadable"),
    ("row_two_million", _beyond_the_grid("A2000000", 2_000_000), "unreadable"),
    ("dtd_behind_a_bom", _dtd_behind_a_bom, "xml_dtd"),
    ("member_named_dot_dot", _odd_member("xl/../../evil.sh"), "unsafe_zip"),
    ("member_named_absolute", _odd_member("/etc/cron.d/evil"), "unsafe_zip"),
    ("member_with_backslashes", _odd_member("xl\\..\\evil.bat"), "unsafe_zip"),
    ("duplicate_member_names", _duplicate_member, "unsafe_zip"),
    ("ten_thousand_and_one_members", _many_members, "unsafe_zip"),
    ("external_entity", _external_entity, "xml_dtd"),
    (
        "dtd_in_workbook",
        lambda: rezip(
            GOOD,
            replace={
                "xl/workbook.xml": member(GOOD, "xl/workbook.xml").replace(
                    b"?>", b"?><!DOCTYPE workbook>", 1
                )
            },
        ),
        "xml_dtd",
    ),
    (
        "enormous_shared_string",
        lambda: raw_sheet(
            _header_cells() + '<row r="2"><c r="A2" t="s"><v>0</v></c></row>',
            shared=b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><si><t>'
            + secrets.token_urlsafe(1_500_000).encode()
            + b"</t></si></sst>",
        ),
        "cell_too_long",
    ),
    (
        "enormous_inline_string",
        lambda: raw_sheet(_header_cells() + inline_row(2, "x" * 40_000, "[]")),
        "cell_too_long",
    ),
    ("too_many_rows", lambda: _huge_rows(500_001), "too_many_rows"),
    ("no_data_rows", lambda: xlsxwriter_bytes([]), "no_data_rows"),
    (
        "header_without_called",
        lambda: xlsxwriter_bytes(
            [r[:1] + r[2:] for r in rows_valid(3)], header=[h for h in HEADER if h != "called"]
        ),
        "no_header",
    ),
    (
        "duplicate_headers",
        lambda: xlsxwriter_bytes([[*r, "x"] for r in rows_valid(3)], header=[*HEADER, "caller"]),
        "duplicate_header",
    ),
    ("data_on_second_sheet", _second_sheet, "no_header"),
    (
        "x_prefixed_namespace",
        lambda: raw_sheet(
            inline_row(1, *HEADER[:2], prefix="x")
            + inline_row(2, "a", '[{"calledNo":"1"}]', prefix="x"),
            prefix="x",
        ),
        "valid",
    ),
    (
        "cells_without_r",
        lambda: raw_sheet(
            inline_row(1, *HEADER[:2], with_r=False)
            + inline_row(2, "a", '[{"calledNo":"1"}]', with_r=False)
        ),
        "valid",
    ),
    (
        "inline_strings",
        lambda: _xlsxwriter(
            lambda b, s: [
                s.write_row(i, 0, r)  # type: ignore[attr-defined]
                for i, r in enumerate([HEADER, *rows_valid(4)])
            ],
            constant_memory=True,
        ),
        "valid",
    ),
    ("rich_text_runs", _rich, "valid"),
    ("phone_as_float", _float_phone, "valid"),
    (
        "number_16_digits",
        lambda: xlsxwriter_bytes(
            [[*rows_valid(1)[0][:2], 1234567890123456, *rows_valid(1)[0][3:]]]
        ),
        "number_corrupted",
    ),
    ("formulas_with_cached_values", _formulas, "valid"),
    ("openpyxl_writer", lambda: openpyxl_bytes(rows_valid(10)), "valid"),
    ("libreoffice_writer", lambda: libreoffice_file(rows_valid(10)), "valid"),
    ("excel_dates", lambda: _dates(False), "valid"),
    ("excel_dates_1904", lambda: _dates(True), "valid"),
    ("recycle_time_serial", lambda: xlsxwriter_bytes([[*rows_valid(1)[0][:5], 46082.75]]), "valid"),
    ("sheet_xml_cut_short", _truncated_member, "unreadable"),
    ("corrupt_deflate_stream", _bad_crc, "unreadable"),
    (
        "shared_string_out_of_range",
        lambda: raw_sheet(
            _header_cells() + '<row r="2"><c r="A2" t="s"><v>99</v></c></row>',
            shared=b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"></sst>',
        ),
        "unreadable",
    ),
    ("chinese_text", _chinese, "valid"),
    (
        "cell_repeated_in_its_row",
        lambda: raw_sheet(
            _header_cells() + '<row r="2">' + '<c r="B2"><v>1</v></c>' * 3 + "</row>"
        ),
        "unreadable",
    ),
    (
        "rows_out_of_order",
        lambda: raw_sheet(
            _header_cells() + inline_row(3, "a", '[{"calledNo":"1"}]') + inline_row(2, "b", "[]")
        ),
        "unreadable",
    ),
    (
        "spans_past_the_grid",
        lambda: raw_sheet(
            (_header_cells() + inline_row(2, "a", '[{"calledNo":"1"}]')).replace(
                "<row ", '<row spans="1:999999999" '
            )
        ),
        "valid",
    ),
    (
        "empty_rows_between",
        lambda: xlsxwriter_bytes([rows_valid(1)[0], [], [], rows_valid(2, 1)[1]]),
        "valid",
    ),
]


def patch_dimension(data: bytes) -> bytes:
    """A wrong <dimension ref="A1"> (some writers do this); readers must not trust it."""
    sheet = member(data, "xl/worksheets/sheet1.xml").decode()
    return rezip(
        data,
        replace={
            "xl/worksheets/sheet1.xml": re.sub(
                r'<dimension ref="[^"]*"/>', '<dimension ref="A1"/>', sheet
            ).encode()
        },
    )
