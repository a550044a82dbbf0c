"""The sheet reader on hand-written packages: prefixes, DTDs in any part, cell order, bounds."""

from __future__ import annotations

import io
import random
import re
from datetime import datetime

import pytest

from tests.handmade import (
    MAIN,
    Inline,
    Package,
    Rich,
    column_letters,
    with_sheet_data,
    workbook,
    zipped,
)
from tests.workbooks import HEADER
from watcher.errors import WorkbookRejected
from watcher.validate import validate_file
from watcher.validate.markup import markup_for
from watcher.validate.text import BytePieces
from watcher.validate.xlsx import SheetReader

ROWS: list[list[object]] = [
    HEADER,
    [
        "s1",
        Rich('[{"calledNo":"', "13800138000", '"}]'),
        95555,
        Inline('{"name":"Li & Lei"}'),
        True,
        datetime(2026, 3, 1, 18),  # noqa: DTZ001 - Excel dates have no time zone
    ],
    ["s2", '[{"calledNo":"13900139000"}]', "95555", None, "vip", "2026-12-31 18:00:00"],
]
EXPECTED = [
    (1, HEADER),
    (2, ["s1", '[{"calledNo":"13800138000"}]', 95555, '{"name":"Li & Lei"}', True, ROWS[1][5]]),
    (3, ["s2", '[{"calledNo":"13900139000"}]', "95555", None, "vip", "2026-12-31 18:00:00"]),
]


def read(tmp_path, data: bytes) -> tuple[list[tuple[int, list[object]]], bool]:
    """The rows of the first sheet, and whether the fast path read all of it."""
    path = tmp_path / "book.xlsx"
    path.write_bytes(data)
    reader = SheetReader(str(path))
    try:
        return list(reader.rows()), reader.fast_path
    finally:
        reader.close()


def verdict(tmp_path, data: bytes):
    path = tmp_path / "book.xlsx"
    path.write_bytes(data)
    return validate_file(path)


# -- 1. any prefix bound to the main namespace, on the fast path ---------------------------------


@pytest.mark.parametrize("prefix", ["x", "ss", ""])
def test_an_sdk_style_package_reads_as_excels_spelling_does_on_the_fast_path(tmp_path, prefix):
    rows, fast = read(tmp_path, workbook(ROWS, prefix=prefix))
    assert rows == EXPECTED  # shared, rich (without its phonetic run), inline, bool, date
    assert fast
    spelt = verdict(tmp_path, workbook(ROWS, prefix=prefix))
    excel = verdict(tmp_path, workbook(ROWS, prefix=""))
    assert spelt.is_valid, spelt.as_json()
    assert (spelt.sheet, spelt.data_rows) == ("calls", 2)
    assert spelt.rows_fingerprint == excel.rows_fingerprint


def test_a_large_prefixed_shared_strings_table_is_read_whole(tmp_path):
    rows = [HEADER] + [
        [f"session-{n:06d}", f'[{{"calledNo":"139{n:08d}"}}]'] for n in range(20_000)
    ]
    data = workbook(rows, prefix="x")
    read_rows, fast = read(tmp_path, data)
    assert fast
    assert read_rows[-1] == (20_001, ["session-019999", '[{"calledNo":"13900019999"}]'])
    report = verdict(tmp_path, data)
    assert report.is_valid
    assert report.data_rows == 20_000


def _replace(parts: dict[str, str], name: str, old: str, new: str) -> dict[str, str]:
    assert old in parts[name]
    return {**parts, name: parts[name].replace(old, new, 1)}


def test_a_prefix_bound_to_another_namespace_is_not_a_cell_or_a_string(tmp_path):
    package = Package("")
    sheet_data = package.rows_xml(ROWS)
    # A foreign <x:c> in row 2 and a foreign <x:si> first in the table: neither counts.
    sheet_data = sheet_data.replace(
        '<row r="2">', '<row r="2"><x:c r="A2" t="s"><x:v>0</x:v></x:c>', 1
    )
    parts = package.parts(sheet_data)
    parts = _replace(
        parts, "xl/worksheets/sheet1.xml", "<worksheet ", '<worksheet xmlns:x="urn:other" '
    )
    parts = _replace(
        parts,
        "xl/sharedStrings.xml",
        '">',
        '" xmlns:x="urn:other"><x:si><x:t>not a string</x:t></x:si>',
    )
    rows, fast = read(tmp_path, zipped(parts))
    assert rows == EXPECTED
    assert fast


def test_a_sheet_whose_root_is_in_another_namespace_is_not_read_as_a_worksheet(tmp_path):
    package = Package("x")
    parts = package.parts(package.rows_xml(ROWS))
    parts = _replace(parts, "xl/worksheets/sheet1.xml", f'xmlns:x="{MAIN}"', 'xmlns:x="urn:other"')
    report = verdict(tmp_path, zipped(parts))
    assert report.counts == {"unreadable": 1}
    assert "not SpreadsheetML" in report.examples[0].message


def _respell_row(xml: str, number: int, prefix: str) -> str:
    """Row ``number`` of an x-prefixed sheet, spelt with ``prefix`` ("" or "y:") instead."""
    start = xml.index(f'<x:row r="{number}">')
    end = xml.index("</x:row>", start) + len("</x:row>")
    return xml[:start] + xml[start:end].replace("x:", prefix) + xml[end:]


@pytest.mark.parametrize(
    ("old", "new", "row_prefix"),
    [
        # The root binds the main namespace twice: "<c>" and "<x:c>" are both cells.
        ("<x:worksheet ", f'<x:worksheet xmlns="{MAIN}" ', ""),
        # A prefix bound inside the sheet, which the fast path's patterns cannot follow.
        ("<x:sheetData>", f'<x:sheetData xmlns:y="{MAIN}">', "y:"),
    ],
    ids=["main_bound_twice", "prefix_bound_inside_the_sheet"],
)
def test_a_sheet_the_patterns_cannot_follow_is_read_exactly_by_elementtree(
    tmp_path, old, new, row_prefix
):
    package = Package("x")
    parts = package.parts(package.rows_xml(ROWS))
    parts = _replace(parts, "xl/worksheets/sheet1.xml", old, new)
    sheet = _respell_row(parts["xl/worksheets/sheet1.xml"], 3, row_prefix)
    rows, fast = read(tmp_path, zipped({**parts, "xl/worksheets/sheet1.xml": sheet}))
    assert rows == EXPECTED
    assert not fast


@pytest.mark.parametrize("prefix", ["", "x"])
def test_shared_strings_in_pieces_or_empty_runs_stay_on_the_fast_path(tmp_path, prefix):
    p = f"{prefix}:" if prefix else ""
    package = Package(prefix)
    parts = package.parts(package.rows_xml(ROWS))
    plain = f"<{p}si><{p}t>vip</{p}t></{p}si>"
    pieces = f"<{p}si><{p}t>v</{p}t><{p}t/><{p}r><{p}t>ip</{p}t></{p}r></{p}si>"
    rows, fast = read(tmp_path, zipped(_replace(parts, "xl/sharedStrings.xml", plain, pieces)))
    assert rows == EXPECTED
    assert fast


@pytest.mark.parametrize("prefix", ["", "x"])
def test_an_empty_shared_string_keeps_the_place_of_the_strings_after_it(
    tmp_path, monkeypatch, prefix
):
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 16)  # pieces without rich text
    p = f"{prefix}:" if prefix else ""
    package = Package(prefix)
    parts = package.parts(package.rows_xml(ROWS))
    plain = f"<{p}si><{p}t>vip</{p}t></{p}si>"
    rows, fast = read(tmp_path, zipped(_replace(parts, "xl/sharedStrings.xml", plain, f"<{p}si/>")))
    assert rows == [EXPECTED[0], EXPECTED[1], (3, [*EXPECTED[2][1][:4], "", *EXPECTED[2][1][5:]])]
    assert fast


@pytest.mark.parametrize("prefix", ["", "x"])
def test_a_shared_string_the_patterns_do_not_take_is_read_by_elementtree(tmp_path, prefix):
    p = f"{prefix}:" if prefix else ""
    package = Package(prefix)
    parts = package.parts(package.rows_xml(ROWS))
    # Valid XML the patterns do not take: skipping it would shift every later string.
    odd = _replace(parts, "xl/sharedStrings.xml", f"<{p}si><{p}t>s2<", f'<{p}si odd="1"><{p}t>s2<')
    rows, fast = read(tmp_path, zipped(odd))
    assert rows == EXPECTED
    assert not fast


# -- 2. DTDs, in every part, wherever they stand --------------------------------------------------

PARTS = [
    "xl/workbook.xml",
    "xl/_rels/workbook.xml.rels",
    "xl/styles.xml",
    "xl/sharedStrings.xml",
    "xl/worksheets/sheet1.xml",
]
DTD = '<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>'


def _with_dtd(xml: str, place: str) -> str:
    if place == "prolog":  # behind a comment, after the declaration
        return xml.replace("?>", "?><!-- a comment -->" + DTD, 1)
    root = re.search(r"<([\w:]+)[^>]*>", xml[xml.index("?>") + 2 :])
    assert root is not None
    at = xml.index("?>") + 2 + root.end()
    return xml[:at] + DTD + xml[at:]  # right after the root's start tag


@pytest.mark.parametrize("place", ["prolog", "body"])
@pytest.mark.parametrize("prefix", ["", "x"])
@pytest.mark.parametrize("part", PARTS)
def test_a_dtd_is_refused_in_every_part(tmp_path, part, prefix, place):
    package = Package(prefix)
    parts = package.parts(package.rows_xml(ROWS))
    parts[part] = _with_dtd(parts[part], place)
    report = verdict(tmp_path, zipped(parts))
    assert report.counts == {"xml_dtd": 1}, report.as_json()
    assert part in report.examples[0].message


@pytest.mark.parametrize("part", ["xl/sharedStrings.xml", "xl/worksheets/sheet1.xml"])
def test_a_dtd_is_refused_by_the_elementtree_reader_too(tmp_path, part):
    package = Package("x")
    parts = package.parts(package.rows_xml(ROWS))
    root = "<x:sst " if part.endswith("Strings.xml") else "<x:worksheet "
    # The main namespace bound twice sends the part to ElementTree; the DTD is in its body.
    parts = _replace(parts, part, root, f'{root}xmlns="{MAIN}" ')
    parts[part] = _with_dtd(parts[part], "body")
    report = verdict(tmp_path, zipped(parts))
    assert report.counts == {"xml_dtd": 1}, report.as_json()


# -- 3. cells and rows repeated or out of order; absurd spans; cells far right --------------------


def _header(p: str) -> str:
    return (
        f'<{p}row r="1"><{p}c r="A1" t="inlineStr"><{p}is><{p}t>sessionId</{p}t></{p}is></{p}c>'
        f'<{p}c r="B1" t="inlineStr"><{p}is><{p}t>called</{p}t></{p}is></{p}c></{p}row>'
    )


def _cell(p: str, reference: str, value: str = "1") -> str:
    return f'<{p}c r="{reference}"><{p}v>{value}</{p}v></{p}c>'


@pytest.mark.parametrize("prefix", ["", "x"])
@pytest.mark.parametrize("path", ["fast", "tree"])
def test_a_cell_repeated_200000_times_is_refused_at_the_second(tmp_path, prefix, path):
    p = f"{prefix}:" if prefix else ""
    tree = path == "tree"
    # Each copy with its own value, or the part compresses like a ZIP bomb and is refused as one.
    copies = "".join(_cell(p, "A2", str(n)) for n in range(200_000))
    row = f'<{p}row r="2">{copies}</{p}row>'
    data = with_sheet_data(_header(p) + row, prefix=prefix, tree=tree)
    with pytest.raises(WorkbookRejected, match="cell A2 appears twice"):
        read(tmp_path, data)
    report = verdict(tmp_path, data)
    assert report.counts == {"unreadable": 1}
    assert report.examples[0].message.startswith("cell A2 appears twice")


ORDER_CASES = {
    "cell_left_of_the_one_before": (
        lambda p: f'<{p}row r="2">{_cell(p, "B2")}{_cell(p, "A2")}</{p}row>',
        "cell A2 comes after a cell to its right",
    ),
    "row_above_the_one_before": (
        lambda p: f'<{p}row r="3">{_cell(p, "A3")}</{p}row><{p}row r="2">{_cell(p, "A2")}</{p}row>',
        "row 2 comes after row 3",
    ),
    "row_repeated_with_the_same_cell": (
        lambda p: f'<{p}row r="2">{_cell(p, "A2")}</{p}row>' * 2,
        "row 2 appears twice",
    ),
    "row_repeated_with_other_cells": (
        lambda p: f'<{p}row r="2">{_cell(p, "A2")}</{p}row><{p}row r="2">{_cell(p, "B2")}</{p}row>',
        "row 2 appears twice",
    ),
    "cell_of_another_row": (
        lambda p: f'<{p}row r="2">{_cell(p, "A2")}{_cell(p, "B3")}</{p}row>',
        "cell 'B3' stands in row 2",
    ),
}


@pytest.mark.parametrize("path", ["fast", "tree"])
@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_cells_and_rows_out_of_order_are_refused_by_name(tmp_path, case, path):
    make, message = ORDER_CASES[case]
    data = with_sheet_data(_header("x:") + make("x:"), prefix="x", tree=path == "tree")
    report = verdict(tmp_path, data)
    assert report.counts["unreadable"] == 1  # rows before it may have their own problems
    refused = next(p for p in report.examples if p.kind == "unreadable")
    assert refused.message.startswith(message), refused.message


@pytest.mark.parametrize("spans", ["1:16384", "1:999999999", "nonsense"])
def test_absurd_spans_on_every_row_change_nothing(tmp_path, spans):
    rows = [HEADER] + [[f"s{n}", f'[{{"calledNo":"{n}"}}]'] for n in range(2_000)]
    with_spans, without = workbook(rows, spans=spans), workbook(rows)
    read_rows, fast = read(tmp_path, with_spans)
    assert fast
    assert max(len(values) for _, values in read_rows) == len(HEADER)
    report, plain = verdict(tmp_path, with_spans), verdict(tmp_path, without)
    assert report.is_valid
    assert report.data_rows == 2_000
    assert report.rows_fingerprint == plain.rows_fingerprint


@pytest.mark.parametrize("path", ["fast", "tree"])
def test_a_cell_at_xfd_on_every_row_is_not_padded_once_the_header_is_known(tmp_path, path):
    p, tree = "x:", path == "tree"
    body = "".join(
        f'<{p}row r="{n}">{_cell(p, f"A{n}", f"{n}")}'
        f"{_cell(p, f'B{n}', '13800138000')}{_cell(p, f'XFD{n}')}</{p}row>"
        for n in range(2, 5_000)
    )
    path_ = tmp_path / "far.xlsx"
    path_.write_bytes(with_sheet_data(_header(p) + body, prefix="x", tree=tree))
    reader = SheetReader(str(path_))
    rows = reader.rows()
    assert next(rows)[0] == 1  # the header, every column
    assert reader.keep_columns([1, 0]) == [0, 1]
    widths = {len(values) for _, values in rows}
    reader.close()
    assert widths == {2}  # not 16,384: the cell in XFD is skipped, never padded to
    assert reader.fast_path is not tree


def _layouts(count: int) -> list[tuple[list[int], list[int]]]:
    """(kept columns, the columns of a row's cells in file order), in order or not."""
    layouts = [  # a skipped cell, then a kept one left of it: each must be refused
        ([0, 2], [1, 0]),
        ([0], [16_383, 0]),
        ([0, 1], [5, 0, 1]),
        ([3], [5, 3]),
        ([3], [5, 2, 3]),
        ([0, 5], [0, 8, 5]),
    ]
    rnd = random.Random(20261129)
    pool = [0, 1, 2, 3, 5, 8, 30, 16_383]
    for _ in range(count):
        kept = sorted(rnd.sample(pool, rnd.randint(1, 4)))
        cells = sorted(rnd.sample(pool, rnd.randint(1, 6)))
        change = rnd.random()
        if change < 0.2:
            rnd.shuffle(cells)
        elif change < 0.4 and len(cells) > 1:
            at = rnd.randrange(len(cells) - 1)
            cells[at], cells[at + 1] = cells[at + 1], cells[at]  # two neighbours swapped
        elif change < 0.55:
            cells.insert(rnd.randrange(len(cells) + 1), rnd.choice(cells))  # one cell twice
        layouts.append((kept, cells))
    return layouts


@pytest.mark.parametrize("path", ["fast", "tree"])
def test_kept_columns_are_read_alike_on_both_paths_whatever_the_cell_order(tmp_path, path):
    for kept, columns in _layouts(300):
        row = "".join(_cell("", f"{column_letters(c)}2", str(c + 100)) for c in columns)
        data = with_sheet_data(
            _header("") + f'<row r="2">{row}</row>', prefix="", tree=path == "tree"
        )
        (tmp_path / "layout.xlsx").write_bytes(data)
        reader = SheetReader(str(tmp_path / "layout.xlsx"))
        rows = reader.rows()
        next(rows)  # the header
        reader.keep_columns(kept)
        in_order = columns == sorted(set(columns))
        try:
            read_rows = list(rows)
        except WorkbookRejected:
            assert not in_order, (kept, columns)
            continue
        finally:
            reader.close()
        assert in_order, (kept, columns)
        expected = [c + 100 if c in columns else None for c in kept]
        while expected and expected[-1] is None:
            expected.pop()
        values = read_rows[0][1] if read_rows else []
        while values and values[-1] is None:
            values.pop()  # a row may hold a None for a kept cell it lacks, or not
        assert values == expected, (kept, columns)
        assert reader.fast_path is (path == "fast"), (kept, columns)


@pytest.mark.parametrize(
    ("sheet_data", "expected"),
    [
        (
            '<x:row r="1"><x:c r="A1" t="inlineStr"><x:is><x:t><![CDATA[13800138000]]></x:t>'
            "</x:is></x:c></x:row>",
            [(1, ["13800138000"])],
        ),
        (
            '<x:row r="1"><x:c r="A1" t="inlineStr"><x:is><x:t>138</x:t><!--<x:t>999</x:t>-->'
            "</x:is></x:c></x:row>",
            [(1, ["138"])],
        ),
        (
            '<x:row r="1"><x:c r="A1"><x:v>1</x:v></x:c></x:row>'
            '<!--<x:row r="2"><x:c r="A2"><x:v>13800138000</x:v></x:c></x:row>-->',
            [(1, [1])],
        ),
        (
            '<x:row r="1"><x:c r="A1" t="inlineStr"><x:is><x:t>a\r\nb</x:t></x:is></x:c></x:row>',
            [(1, ["a\nb"])],
        ),
    ],
)
def test_comments_cdata_and_carriage_returns_are_read_as_a_parser_reads_them(
    tmp_path, sheet_data, expected
):
    rows, fast = read(tmp_path, with_sheet_data(sheet_data))
    assert rows == expected
    assert not fast


def test_rows_in_a_comment_before_the_sheet_s_root_are_no_rows(tmp_path):
    """A parser sees no header here: a comment before the root holds it, and the fast path
    must not read the comment's rows as the sheet's."""
    cells = "".join(
        f'<c r="{chr(65 + at)}1" t="inlineStr"><is><t>{name}</t></is></c>'
        for at, name in enumerate(HEADER)
    )
    rows = "".join(f'<row r="{n}"><c r="A{n}"><v>{n}</v></c></row>' for n in range(2, 400))
    parts = Package("").parts(rows)
    sheet = parts["xl/worksheets/sheet1.xml"]
    at = sheet.index("<worksheet")
    parts["xl/worksheets/sheet1.xml"] = f'{sheet[:at]}<!--<row r="1">{cells}</row>-->{sheet[at:]}'
    data = zipped(parts)
    got, fast = read(tmp_path, data)
    assert got[0] == (2, [2])
    assert fast
    assert verdict(tmp_path, data).counts == {"no_header": 1}


def test_a_row_tag_ends_at_its_first_angle_bracket():
    """The guard counting rows reads a start tag only up to a "<" (which no attribute holds):
    otherwise from each of a million "<row" it searched on to a ">" (quadratic, hours)."""
    from watcher.validate.markup import markup_for

    markup = markup_for(b"")
    assert markup.counts_rows(b'<row r="2" x="a>b"><c r="A2"/></row>', 0)  # ">" ends it early
    assert markup.counts_rows(b'<row r="2"><c r="A2"/></row>', 1)
    assert markup.counts_rows(b'<row<row<row r="2"><c r="A2"/></row>', 1)
    assert markup.row_with_cell.match(b'<row x <row r="2"><c r="A2"/></row>') is None


@pytest.mark.parametrize("prefix", [b"", b"x:"])
def test_an_open_inline_or_shared_string_never_reaches_past_the_next_one(prefix):
    """Each search for an element's end stops where another starts: no match spans two cells
    or two strings, so a piece of many unclosed ones is read in linear time, not quadratic."""
    p = prefix
    markup = markup_for(p)
    cells = (
        b'<%sc r="A2"><%sis><%sc r="A3" t="inlineStr"><%sis><%sr><%st>x</%st></%sr></%sis></%sc>'
        % ((p,) * 10)
    )
    assert [cell[0] + cell[1] for cell in markup.cell.findall(cells)] == [b"A3"]
    strings = "<{0}si><{0}si><{0}t>x</{0}t></{0}si>".format(p.decode())
    assert markup.strings.findall(strings) == [("x", "")]


class _CountedReads(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


def test_a_long_row_is_read_in_growing_reads():
    """A row of megabytes (up to max_row_bytes) is read in reads that grow with it: copying
    the unfinished piece at every read of 64 KB would cost its size squared."""
    rows = [b"<row>" + b"x" * 3_000_000 + b"</row>", b"<row>y</row>" * 5000, b"<row>z</row>"]
    stream = _CountedReads(b"".join(rows))
    pieces = list(BytePieces(stream, b"</row>", 8_000_000, "a row"))
    assert b"".join(pieces) == b"".join(rows)
    assert all(piece.endswith(b"</row>") for piece in pieces)
    assert pieces[0].startswith(rows[0])  # the long row is in the first piece, whole
    assert stream.reads <= 12  # 64 KB, 64 KB, 128 KB, ... past 3 MB: not 46 reads
