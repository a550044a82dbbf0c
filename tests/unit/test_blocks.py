"""Rows found whole by a row pattern read exactly as rows read a cell at a time.

The reader learns the shape of a data row and then finds runs of such rows with one pattern
(``watcher.validate.blocks``). Whatever the sheet holds between or inside them (rows of another
shape, entities, styles, rows out of order, strings that do not exist, self-closing rows), the
rows it yields, and what it refuses, must be those of the reader with no row pattern at all.
"""

from __future__ import annotations

import random
import re
import zipfile

import pytest
import xlsxwriter

from tests.handmade import Package, with_sheet_data
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.errors import WorkbookRejected
from watcher.validate import ValidationOptions, blocks, validate_file, xlsx
from watcher.validate.blocks import RowShape, decode
from watcher.validate.text import SharedStrings
from watcher.validate.xlsx import FastPathUnsupported, SheetReader

LETTERS = "ABCDEFGH"


def _inline(p: str, ref: str, text: str, style: str = "") -> str:
    return f'<{p}c r="{ref}"{style} t="inlineStr"><{p}is><{p}t>{text}</{p}t></{p}is></{p}c>'


def _number(p: str, ref: str, value: str, extra: str = "") -> str:
    return f'<{p}c r="{ref}"{extra}><{p}v>{value}</{p}v></{p}c>'


def _plain_row(p: str, n: int, rnd: random.Random) -> list[str]:
    texts = [f"s{n}", f'[{{"calledNo":"138{n:08d}"}}]', "", "x" * rnd.randint(0, 40), "中文"]
    cells = [_inline(p, f"{letter}{n}", rnd.choice(texts)) for letter in LETTERS[:6]]
    cells.append(_number(p, f"G{n}", str(rnd.randint(1, 5))))
    return cells


ODD = [  # each makes one row unlike the others, in a way the reader must still read right
    lambda p, n, cells: cells[:3] + cells[4:],  # a missing cell
    lambda p, n, cells: [*cells, _number(p, f"H{n}", "7")],  # one more cell
    lambda p, n, cells: [*cells[:6], _number(p, f"G{n}", "45000", ' s="1"')],  # a style
    lambda p, n, cells: [*cells[:6], _number(p, f"G{n}", "2.5")],
    lambda p, n, cells: [*cells[:6], _number(p, f"G{n}", "-3")],
    lambda p, n, cells: [*cells[:6], _inline(p, f"G{n}", "high")],
    lambda p, n, cells: [_inline(p, f"A{n}", "a &amp; b"), *cells[1:]],
    lambda p, n, cells: [_inline(p, f"A{n}", ""), *cells[1:]],
    lambda p, n, cells: [_number(p, f"A{n}", "12345678901234567890"), *cells[1:]],
    lambda p, n, cells: [c.replace(f"<{p}t>", f'<{p}t xml:space="preserve">') for c in cells],
    lambda p, n, cells: [f'<{p}c r="A{n}" t="b"><{p}v>1</{p}v></{p}c>', *cells[1:]],
    lambda p, n, cells: [*cells[:1], f'<{p}c r="B{n}"/>', *cells[2:]],
    lambda p, n, cells: [cells[1], cells[0], *cells[2:]],  # cells out of order
    lambda p, n, cells: [c.replace(f'r="C{n}"', f'r="C{n + 1}"') for c in cells],
    lambda p, n, cells: [_inline(p, f"A{n}", "y" * 40_000), *cells[1:]],  # too long
]


def _sheet(p: str, rnd: random.Random, rows: int, odd: float, *, never: str = "") -> str:
    header = [_inline(p, f"{letter}1", name) for letter, name in zip(LETTERS, NAMES, strict=False)]
    out = [f'<{p}row r="1">{"".join(header)}</{p}row>']
    n = 1
    for _ in range(rows):
        n += 1 if rnd.random() < 0.97 else rnd.choice((2, 5, 0, -3))  # gaps, repeats, back
        cells = [c for c in _plain_row(p, n, rnd) if not never or f'r="{never}{n}"' not in c]
        attributes = ' spans="1:7"' if rnd.random() < 0.5 else ""
        if rnd.random() < odd:
            choice = rnd.randrange(len(ODD) + 3)
            if choice == len(ODD):
                out.append(f'<{p}row r="{n}"/>')
                continue
            if choice == len(ODD) + 1:
                attributes = ' x="a>b"'
            elif choice == len(ODD) + 2:
                n = 1_048_577
            else:
                cells = ODD[choice](p, n, cells)
        out.append(f'<{p}row r="{n}"{attributes}>{"".join(cells)}</{p}row>')
    return "".join(out)


NAMES = ["sessionId", "called", "caller", "callData", "customField", "recycleTime", "priority"]


def _read(path: str, kept: list[int]) -> tuple[object, bool]:
    reader = SheetReader(path)
    try:
        rows = reader.rows()
        next(rows)
        reader.keep_columns(kept)
        return list(rows), reader.fast_path
    except (WorkbookRejected, FastPathUnsupported, ValueError) as exc:
        return (type(exc).__name__, str(exc)), reader.fast_path
    finally:
        reader.close()


def _without_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RowShape, "learn", classmethod(lambda cls, *args: None))


@pytest.mark.parametrize("seed", range(16))
def test_rows_found_whole_read_as_rows_read_a_cell_at_a_time(tmp_path, monkeypatch, seed):
    rnd = random.Random(seed)
    prefix = "x" if seed % 4 == 3 else ""
    p = f"{prefix}:" if prefix else ""
    odd = (0.0, 0.01, 0.05, 0.3)[seed % 4]
    path = tmp_path / "book.xlsx"
    never = "E" if seed % 8 >= 4 else ""  # a column the header names and no row fills
    path.write_bytes(with_sheet_data(_sheet(p, rnd, 800, odd, never=never), prefix=prefix))
    kept = sorted(rnd.sample(range(7), rnd.randint(1, 7))) if seed % 2 else list(range(7))
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", rnd.choice((700, 4096, 30_000)))
    blocks = []
    monkeypatch.setattr(xlsx, "decode", lambda *args: blocks.append(decode(*args)) or blocks[-1])
    with_shapes = _read(str(path), kept)
    if odd < 0.3 and isinstance(with_shapes[0], list):
        assert any(blocks), "no rows were found whole: the test compares a path with itself"
    _without_shapes(monkeypatch)
    assert with_shapes == _read(str(path), kept)


def _rows_of(p: str, numbers: list[int], odd: dict[int, str], empty: set[int]) -> str:
    header = [_inline(p, f"{letter}1", name) for letter, name in zip(LETTERS, NAMES, strict=False)]
    out = [f'<{p}row r="1">{"".join(header)}</{p}row>']
    for at, n in enumerate(numbers):
        texts = [""] * 6 if at in empty else [f"v{n}"] * 6
        cells = [
            _inline(p, f"{letter}{n}", text) for letter, text in zip(LETTERS, texts, strict=False)
        ]
        cells.append(_number(p, f"G{n}", "3"))
        if at in odd:
            cells[0] = _inline(p, f"A{n}", odd[at])
        out.append(f'<{p}row r="{n}">{"".join(cells)}</{p}row>')
    return "".join(out)


CRAFTED = {  # row numbers, rows made odd (an entity in A), rows of empty texts, kept columns
    "back in a run": ([*range(2, 300), 150, *range(301, 400)], {}, set(), range(7)),
    "back after an odd row": (
        [*range(2, 100), 99, *range(100, 200)],
        {97: "&amp;"},
        set(),
        range(7),
    ),
    "repeat after an odd row": (
        [*range(2, 200), 199, *range(200, 250)],
        {197: "&lt;"},
        set(),
        range(7),
    ),
    "repeat of a run's last row": ([*range(2, 200), *range(150, 250)], {}, set(), range(7)),
    "rows of empty texts": (list(range(2, 400)), {}, {5, 6, 7, 100, 398}, range(6)),
    "empty texts kept with a number": (list(range(2, 400)), {}, {5, 6, 7, 100, 398}, range(7)),
}


@pytest.mark.parametrize("case", CRAFTED)
@pytest.mark.parametrize("chunk", [300, 700, 4096, 1 << 18])
def test_crafted_sheets_read_alike_with_row_patterns_or_without(tmp_path, monkeypatch, case, chunk):
    numbers, odd, empty, kept = CRAFTED[case]
    path = tmp_path / "crafted.xlsx"
    path.write_bytes(with_sheet_data(_rows_of("", numbers, odd, empty), prefix=""))
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", chunk)
    with_shapes = _read(str(path), list(kept))
    _without_shapes(monkeypatch)
    assert with_shapes == _read(str(path), list(kept))


def _shared_strings_book(path, rnd: random.Random, *, by_columns: bool = False) -> None:
    """A list of shared strings, numbered row by row (as Excel numbers them) or, with
    ``by_columns``, a column at a time (as a writer does that is given a column at a time)."""
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, NAMES)
    if by_columns:
        sheet.write_column(1, 0, [f"s{n}" for n in range(1, 3000)])
        sheet.write_column(1, 1, [f'[{{"calledNo":"138{n:08d}"}}]' for n in range(1, 3000)])
        sheet.write_column(1, 3, [f"中文 {n}" for n in range(1, 3000)])
        sheet.write_column(1, 5, [rnd.choice(("2026-01-01 08:00:00", "x")) for _ in range(2999)])
        sheet.write_column(1, 6, [rnd.randint(0, 6) for _ in range(2999)])
        book.close()
        return
    for n in range(1, 3000):
        sheet.write_string(n, 0, f"s{n}")
        sheet.write_string(n, 1, f'[{{"calledNo":"138{rnd.randint(0, 3000):08d}"}}]')
        sheet.write_string(n, 2, rnd.choice(("", "021", "a & b", "<x>")))
        if rnd.random() < 0.98:
            sheet.write_string(n, 3, f"中文 {rnd.randint(0, 50)}")
        sheet.write_string(n, 5, "2026-01-01 08:00:00")
        if rnd.random() < 0.97:
            sheet.write_number(n, 6, rnd.randint(0, 6))
        else:
            sheet.write_string(n, 6, "high")
    book.close()


@pytest.mark.parametrize("by_columns", [False, True])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_shared_strings_list_gets_the_same_report_with_row_patterns_or_without(
    tmp_path, monkeypatch, workers, by_columns
):
    path = tmp_path / "shared.xlsx"
    _shared_strings_book(path, random.Random(workers), by_columns=by_columns)
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)
    options = ValidationOptions(workers=workers, split_min_bytes=1)
    with_shapes = validate_file(path, options).as_json()
    _without_shapes(monkeypatch)
    without = validate_file(path, options).as_json()
    assert with_shapes == without
    assert with_shapes["rows_fingerprint"].startswith("rows-v1:2999:")


def test_row_patterns_are_used_on_a_plain_sheet(tmp_path, monkeypatch):
    """The test above must compare two ways of reading, not one way twice."""
    path = tmp_path / "shared.xlsx"
    _shared_strings_book(path, random.Random(3))
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)
    found = []
    learn = RowShape.learn.__func__  # type: ignore[attr-defined]

    def spy(cls, *args):
        shape = learn(cls, *args)
        found.append(shape)
        return shape

    monkeypatch.setattr(RowShape, "learn", classmethod(spy))
    validate_file(path, ValidationOptions(workers=1))
    assert any(shape is not None for shape in found)


@pytest.mark.parametrize("broken", [False, True])
def test_a_broken_shared_string_no_cell_uses_is_no_error_either_way(tmp_path, monkeypatch, broken):
    """Runs decode the strings they use together; a broken one between them is not theirs."""
    package = Package("")
    rows = [NAMES]
    rows += [
        [f"s{n}", f'[{{"calledNo":"138{n:08d}"}}]', "021", "d", "e", "", 3] for n in range(2, 400)
    ]
    xml = package.rows_xml(rows)
    middle = len(package.strings) // 2  # an unused string there, and the indices after it moved

    def moved(match: re.Match[str]) -> str:
        index = int(match.group(2))
        return f"{match.group(1)}{index + (index >= middle)}</v>"

    xml = re.sub(r'(t="s"><v>)(\d+)</v>', moved, xml)
    package.strings.insert(middle, "<si><t>UNUSED</t></si>")
    parts = {name: text.encode() for name, text in package.parts(xml).items()}
    if broken:
        parts["xl/sharedStrings.xml"] = parts["xl/sharedStrings.xml"].replace(b"UNUSED", b"\xff")
    path = tmp_path / "broken.xlsx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 2048)
    with_shapes = validate_file(path, ValidationOptions(workers=1)).as_json()
    _without_shapes(monkeypatch)
    assert with_shapes == validate_file(path, ValidationOptions(workers=1)).as_json()
    assert with_shapes["rows_fingerprint"].startswith("rows-v1:398:")


def test_the_row_pattern_never_searches_the_sheets_last_piece(tmp_path, monkeypatch):
    """After the last </row> a hostile sheet may hold "<row" a million times and no </row>:
    from each, the pattern's catch-all branch would search to the end (hours for a few MB).
    Every piece the pattern searches ends with </row>, so each search stops at one."""
    path = tmp_path / "tail.xlsx"
    tail = "<row" * 500  # after </sheetData>: the last piece
    parts = Package("").parts(_rows_of("", list(range(2, 400)), {}, set()))
    sheet = parts["xl/worksheets/sheet1.xml"].replace("</sheetData>", "</sheetData>" + tail)
    parts["xl/worksheets/sheet1.xml"] = sheet
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in parts.items():
            archive.writestr(name, text)
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)
    searched = []
    runs = SheetReader._runs

    def spy(self, piece, *args):
        items = runs(self, piece, *args)
        searched.append((piece.endswith(b"</row>"), items is not None))
        return items

    monkeypatch.setattr(SheetReader, "_runs", spy)
    rows, _ = _read(str(path), list(range(7)))
    assert isinstance(rows, list)
    assert len(rows) == 398
    assert (True, True) in searched, "no piece was read by the row pattern"
    assert (False, True) not in searched


@pytest.mark.parametrize("chunk", [700, 4096])
def test_rows_of_only_columns_not_kept_are_not_yielded(tmp_path, monkeypatch, chunk):
    """A run of rows that hold only a column the header does not name (a note in H) holds
    nothing the checker reads: no row of it is yielded, as a cell at a time."""
    names = [*NAMES, "notes"]
    header = "".join(
        _inline("", f"{letter}1", name) for letter, name in zip("ABCDEFGH", names, strict=True)
    )
    rows = [f'<row r="1">{header}</row>']
    rows += [f'<row r="{n}">{_inline("", f"H{n}", "note")}</row>' for n in range(2, 300)]
    rows.append(f'<row r="300">{_inline("", "A300", "s300")}</row>')
    path = tmp_path / "notes.xlsx"
    path.write_bytes(with_sheet_data("".join(rows), prefix=""))
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", chunk)
    with_shapes = _read(str(path), list(range(7)))
    assert with_shapes == ([(300, ["s300"])], True)
    _without_shapes(monkeypatch)
    assert with_shapes == _read(str(path), list(range(7)))


@pytest.mark.parametrize("cache_chars", [1 << 20, 40])
@pytest.mark.parametrize("seed", range(12))
def test_strings_decoded_in_stretches_are_those_decoded_one_by_one(monkeypatch, seed, cache_chars):
    """However a run numbers its strings (together, in far columns, with far repeats, with
    broken strings among them or used by it), it gets each string as decoded alone; and so
    it does when the strings kept for reuse must often be let go."""
    monkeypatch.setattr("watcher.validate.text._CACHE_CHARS", cache_chars)
    rnd = random.Random(seed)
    table = SharedStrings()
    size = rnd.choice((50, 400, 5000))
    broken = set(rnd.sample(range(size), rnd.choice((0, 0, 1, 3))))
    table.extend_utf8([b"\xff" if n in broken else f"t{n}".encode() for n in range(size)])
    table.done()
    columns = []
    for _ in range(rnd.randint(1, 5)):
        base = rnd.randrange(size)
        column = []
        for _ in range(rnd.randint(1, 300)):
            pick = rnd.random()
            if pick < 0.8:
                column.append(min(base + len(column) * rnd.choice((1, 1, 2, 5)), size - 1))
            else:
                column.append(rnd.randrange(size))
        columns.append(tuple(str(n).encode() for n in column))
    used = {int(raw) for column in columns for raw in column}
    if used & broken:
        with pytest.raises(UnicodeDecodeError):
            blocks._shared(columns, table)
    else:
        expected = [[table[int(raw)] for raw in column] for column in columns]
        assert blocks._shared(columns, table) == expected
        assert blocks._shared(columns[::-1], table) == expected[::-1]  # again, from the cache
        for column in columns:  # some strings known, some new, the bound passed on the way
            rows = [raw for raw in column if rnd.random() < 0.5] + [b"0", b"1"] * (0 not in broken)
            if rows and not {int(raw) for raw in rows} & broken:
                assert blocks._shared([tuple(rows)], table) == [[table[int(r)] for r in rows]]
    assert table._cached_chars <= max(cache_chars, 8 * 300 * 5)  # let go when over the bound
    assert blocks._shared([(str(size).encode(),)], table) is None  # past the table's end
    with pytest.raises(IndexError):
        table[-1]
    for _ in range(20):  # stretches across groups of strings, up to the table's last
        low = rnd.randrange(size)
        high = rnd.randrange(low, min(size, low + 40))
        if not broken & set(range(low // 16 * 16, high // 16 * 16 + 16)):
            assert table.stretch(low, high) == [f"t{n}" for n in range(low, high + 1)]
        else:
            assert table.stretch(low, high) is None


def test_strings_kept_for_reuse_are_let_go_without_losing_one_asked_for(monkeypatch):
    """Strings kept from an earlier run and strings new to this one, more than the bound:
    letting go of the kept ones must not lose those this run asks for."""
    monkeypatch.setattr("watcher.validate.text._CACHE_CHARS", 1000)
    table = SharedStrings()
    table.extend_utf8([b"%05d" % n + b"x" * 45 for n in range(400)])
    table.done()
    for run in (range(30, 200, 3), range(200, 400, 3)):  # each over the bound with string 0
        wanted = [0, *run]
        assert table.each(wanted) == [table[n] for n in wanted]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_list_whose_call_data_comes_from_templates_is_valid(tmp_path, monkeypatch, workers):
    """Many rows sharing values seen long before (a text from a few hundred templates): more
    of them than the strings kept for reuse."""
    rnd = random.Random(workers)
    templates = [f'{{"script":{n},"text":"{"x" * rnd.randint(50, 90)}"}}' for n in range(300)]
    rows = rows_valid(2000)
    for row in rows:
        row[3] = rnd.choice(templates)
    path = tmp_path / "templates.xlsx"
    path.write_bytes(xlsxwriter_bytes(rows))
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)
    monkeypatch.setattr("watcher.validate.text._CACHE_CHARS", 2000)
    report = validate_file(path, ValidationOptions(workers=workers, split_min_bytes=1))
    assert report.is_valid, report.as_json()
    assert report.data_rows == 2000


class _CountedCopies(bytearray):
    """A table's buffer that counts the bytes sliced out of it."""

    copied = 0

    def __getitem__(self, key):  # type: ignore[override]
        got = super().__getitem__(key)
        if isinstance(key, slice):
            self.copied += len(got)
        return got


def test_a_string_among_long_ones_is_copied_alone():
    """A group of 16 strings of up to 32,767 characters holds megabytes: a cell that asks for
    one of them, in no order, must not cost a copy of its whole group."""
    table = SharedStrings()
    table.extend_utf8([b"%05d" % n + b"x" * 20_000 for n in range(160)])
    table.done()
    table.buffer = _CountedCopies(table.buffer)
    asked = [(n * 37) % 160 for n in range(40)]  # a new group at every lookup
    assert [table[n][:5] for n in asked] == [f"{n:05d}" for n in asked]
    assert table.each(asked[::-1]) == [table[n] for n in asked[::-1]]
    assert table.buffer.copied <= 3 * 40 * 20_005
