"""A big sheet is checked by two processes; the verdict must equal the one of a single process."""

from __future__ import annotations

import os
import re
import threading
import zipfile
from array import array
from pathlib import Path

import pytest
from openpyxl.reader.strings import read_string_table

from tests.corpus import inline_row, member, raw_sheet, rezip
from tests.workbooks import HEADER, rows_valid, xlsxwriter_bytes
from watcher.validate import ValidationOptions, validate_file
from watcher.validate.forks import receive, send
from watcher.validate.text import CHUNK_BYTES, STRIDE, MappedStrings, SharedStrings
from watcher.validate.xlsx import SheetReader

SERIAL = ValidationOptions(workers=1)
SPLIT = ValidationOptions(workers=2, split_min_bytes=1)


def rows_with_problems(count: int) -> list[list[object]]:
    rows = rows_valid(count)
    for i in range(0, count, 97):
        rows[i][5] = "2026-02-30 10:00:00"
    rows[count - 3][0] = rows[2][0]  # a sessionId repeated across the two halves
    rows[count - 2][1] = rows[1][1]  # and a number
    return rows


@pytest.mark.parametrize("inline", [False, True, "x"])
def test_two_processes_find_exactly_what_one_finds(tmp_path, inline):
    path = tmp_path / "big.xlsx"
    rows = rows_with_problems(3000)
    if inline:
        prefix = inline if isinstance(inline, str) else ""  # "x": the Open XML SDK's spelling
        body = "".join(
            inline_row(n + 2, *map(str, row), prefix=prefix) for n, row in enumerate(rows)
        )
        path.write_bytes(raw_sheet(inline_row(1, *HEADER, prefix=prefix) + body, prefix=prefix))
    else:
        path.write_bytes(xlsxwriter_bytes(rows))
    serial, split = validate_file(path, SERIAL), validate_file(path, SPLIT)
    assert split.counts == serial.counts
    assert split.counts["duplicate_session_id"] == 1
    assert split.counts["duplicate_called_no"] == 1
    assert split.data_rows == serial.data_rows == 3000
    assert [(p.row, p.kind) for p in split.examples] == [(p.row, p.kind) for p in serial.examples]


def test_a_sheet_the_fast_path_cannot_read_is_read_again_serially(tmp_path):
    path = tmp_path / "without_r.xlsx"
    body = "".join(
        inline_row(n, f"s{n}", f'[{{"calledNo":"{n}"}}]', with_r=False) for n in range(2, 400)
    )
    path.write_bytes(raw_sheet(inline_row(1, *HEADER[:2], with_r=False) + body))
    report = validate_file(path, SPLIT)
    assert report.is_valid
    assert report.data_rows == 398


def test_a_problem_in_the_second_half_reaches_the_verdict(tmp_path):
    path = tmp_path / "late.xlsx"
    body = "".join(inline_row(n, f"s{n}", f'[{{"calledNo":"{n}"}}]') for n in range(2, 9000))
    body += '<row r="9000"><c r="B9000" t="s"><v>99999</v></c></row>'  # no such shared string
    path.write_bytes(raw_sheet(inline_row(1, *HEADER[:2]) + body))
    report = validate_file(path, SPLIT)
    assert "unreadable" in report.counts
    assert "shared string" in report.examples[0].message


def test_a_row_repeated_where_the_two_halves_meet_is_refused_as_by_one_process(tmp_path):
    # Rows of one width (five-digit numbers), so that renumbering one moves no piece boundary.
    body = "".join(inline_row(n, f"s{n}", f'[{{"calledNo":"{n}"}}]') for n in range(10_000, 22_000))
    data = raw_sheet(inline_row(1, *HEADER[:2]) + body)
    sheet = member(data, "xl/worksheets/sheet1.xml")
    # The second process starts at the first row after the last piece cut before the middle.
    middle = len(sheet) * 54 // 100
    start = sheet.rfind(b"</row>", 0, middle // CHUNK_BYTES * CHUNK_BYTES) + len(b"</row>")
    first = re.match(rb'<row r="(\d+)">', sheet[start:])
    assert first is not None
    number = int(first[1])
    end = sheet.index(b"</row>", start)
    again = sheet[start:end].replace(str(number).encode(), str(number - 1).encode())
    sheet = sheet[:start] + again + sheet[end:]  # row number - 1, twice: one in each half
    path = tmp_path / "seam.xlsx"
    path.write_bytes(rezip(data, replace={"xl/worksheets/sheet1.xml": sheet}))
    for options in (SERIAL, SPLIT):
        report = validate_file(path, options)
        assert report.counts == {"unreadable": 1}
        assert report.examples[0].message.startswith(f"row {number - 1:,} appears twice")


# -- the shared strings, read by two processes ---------------------------------------------------


def strings_workbook(count: int) -> bytes:
    """A list whose strings hold entities, leading spaces and Chinese, all over the table."""
    rows = rows_with_problems(count)
    for i in range(0, count, 7):
        rows[i][3] = f'{{"name":"李 & 王 <{i}>"}}'
        rows[i][4] = f"  vip {i} "
    return xlsxwriter_bytes(rows)


def tables(path, monkeypatch):
    """The shared strings as one process reads them and as two do, and each one's fast path."""
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)  # pieces in both halves
    monkeypatch.setattr("watcher.validate.text._MOVE_BYTES", 5000)  # the second half in steps
    one, two = SheetReader(str(path)), SheetReader(str(path))
    try:
        one.load_strings()
        two.load_strings_in_two(1)
        read = [[reader._strings[i] for i in range(len(reader._strings))] for reader in (one, two)]
        return read, (one.fast_path, two.fast_path)
    finally:
        one.close()
        two.close()


def test_shared_strings_read_in_two_halves_are_the_table_one_process_reads(tmp_path, monkeypatch):
    path = tmp_path / "strings.xlsx"
    path.write_bytes(strings_workbook(3000))
    (serial_table, split_table), fast = tables(path, monkeypatch)
    assert split_table == serial_table
    assert len(serial_table) > 6000
    assert fast == (True, True)
    serial, split = validate_file(path, SERIAL), validate_file(path, SPLIT)
    assert split.counts == serial.counts
    assert split.rows_fingerprint == serial.rows_fingerprint
    assert [(p.row, p.kind) for p in split.examples] == [(p.row, p.kind) for p in serial.examples]


def test_strings_joined_from_halves_cut_anywhere_are_found_by_their_numbers(tmp_path, monkeypatch):
    """The table keeps one offset for each group of 16 strings, numbered in the whole table:
    wherever the first half ends, the second half's groups must start at the right strings."""
    path = tmp_path / "strings.xlsx"
    path.write_bytes(strings_workbook(800))
    first_halves = []
    join = MappedStrings.join

    def counted(self, ends):
        first_halves.append(len(self.ends) - 1)
        join(self, ends)

    monkeypatch.setattr(MappedStrings, "join", counted)
    for percent in range(20, 84, 3):
        monkeypatch.setattr(
            "watcher.validate.xlsx._first_part", lambda size, p=percent: size * p // 100
        )
        (serial_table, split_table), fast = tables(path, monkeypatch)
        assert split_table == serial_table
        assert fast == (True, True)
    assert len({count % STRIDE for count in first_halves}) >= 8  # groups cut in many places


def _among_the_strings(data: bytes, make: bytes, quarter: int = 3) -> bytes:
    """The workbook with ``make`` put between two strings ``quarter`` quarters of the way in."""
    strings = member(data, "xl/sharedStrings.xml")
    at = strings.index(b"<si>", len(strings) * quarter // 4)
    return rezip(data, replace={"xl/sharedStrings.xml": strings[:at] + make + strings[at:]})


@pytest.mark.parametrize("quarter", [1, 3])
def test_a_string_either_half_cannot_take_fast_sends_the_table_to_elementtree(
    tmp_path, monkeypatch, quarter
):
    path = tmp_path / "odd.xlsx"
    odd = b'<si ><t xml:space="preserve"> odd</t></si>'  # a space in the tag: not a pattern's
    path.write_bytes(_among_the_strings(strings_workbook(3000), odd, quarter))
    (serial_table, split_table), fast = tables(path, monkeypatch)
    assert split_table == serial_table
    assert " odd" in serial_table
    assert fast == (False, False)


def _openpyxl_strings(path) -> list[str]:
    with zipfile.ZipFile(path) as archive, archive.open("xl/sharedStrings.xml") as part:
        return [str(text) for text in read_string_table(part)]


@pytest.mark.parametrize(
    "hostile",
    [
        b"<!--<si><t>13900000000</t></si>-->",  # a string only a comment holds
        b"<?note <si><t>13900000000</t></si>?>",  # or an instruction
        b"<si><t><![CDATA[13800138000]]></t></si>",
        b"<si><t>138</t><!--<t>999</t>--></si>",
        b'<si><r><t a=">999">138</t></r></si>',  # ">" in an attribute's value
        b"<si><t>a\r\nb\rc</t></si>",  # XML reads a CR as a line feed
    ],
)
def test_hostile_strings_map_every_index_to_the_string_a_parser_reads(
    tmp_path, monkeypatch, hostile
):
    path = tmp_path / "hostile.xlsx"
    path.write_bytes(_among_the_strings(strings_workbook(3000), hostile))
    (serial_table, split_table), _ = tables(path, monkeypatch)
    expected = _openpyxl_strings(path)
    assert serial_table == expected
    assert split_table == expected


@pytest.mark.parametrize(
    "prolog",
    [
        b"<!--<si><t>13900000000</t></si>-->",  # a string only a comment before the root holds
        b"<!--<si><t>a\x00b</t></si>-->",  # with a NUL, which ends each string in the table
    ],
)
def test_a_string_in_a_comment_before_the_table_is_no_string(tmp_path, monkeypatch, prolog):
    """Every cell keeps its own string: one more before the first would give each cell the
    string before its own. A NUL anywhere in the part leaves it to the parser, which refuses it."""
    data = strings_workbook(3000)
    strings = member(data, "xl/sharedStrings.xml")
    at = strings.index(b"<sst")
    path = tmp_path / "prolog.xlsx"
    path.write_bytes(
        rezip(data, replace={"xl/sharedStrings.xml": strings[:at] + prolog + strings[at:]})
    )
    if b"\x00" in prolog:
        monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)
        for options in (SERIAL, SPLIT):
            report = validate_file(path, options)
            assert report.counts == {"unreadable": 1}
            assert "not well-formed" in report.examples[0].message
        return
    (serial_table, split_table), fast = tables(path, monkeypatch)
    assert serial_table == split_table == _openpyxl_strings(path)
    assert fast == (True, True)


def test_a_dtd_in_the_second_half_of_the_strings_is_refused_as_by_one_process(
    tmp_path, monkeypatch
):
    path = tmp_path / "dtd.xlsx"
    path.write_bytes(_among_the_strings(strings_workbook(3000), b"<!DOCTYPE bomb>"))
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)
    for options in (SERIAL, SPLIT):
        report = validate_file(path, options)
        assert report.counts == {"xml_dtd": 1}, report.as_json()


@pytest.mark.parametrize("where", [b"sharedStrings", b"sheet1"])
def test_a_nul_byte_makes_the_workbook_unreadable_as_a_parser_finds_it(
    tmp_path, monkeypatch, where
):
    """XML cannot hold a NUL, and the table ends each string with one: a NUL read into the
    table would shift every string after it in its group to another cell."""
    data = strings_workbook(3000)
    if where == b"sharedStrings":
        data = _among_the_strings(data, b"<si><t>a\x00b</t></si>", 1)
    else:
        sheet = member(data, "xl/worksheets/sheet1.xml")
        at = sheet.index(b"</v>", len(sheet) // 3)
        data = rezip(data, replace={"xl/worksheets/sheet1.xml": sheet[:at] + b"\x00" + sheet[at:]})
    path = tmp_path / "nul.xlsx"
    path.write_bytes(data)
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)
    serial, split = validate_file(path, SERIAL), validate_file(path, SPLIT)
    assert split.as_json() == serial.as_json()
    assert serial.counts["unreadable"] == 1
    assert any("not well-formed" in problem.message for problem in serial.examples)


def test_strings_are_read_by_one_process_where_no_shared_memory_can_be_mapped(
    tmp_path, monkeypatch
):
    path = tmp_path / "strings.xlsx"
    path.write_bytes(strings_workbook(300))
    expected = validate_file(path, SERIAL)

    def refused(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr("watcher.validate.xlsx.mmap.mmap", refused)
    reader = SheetReader(str(path))
    try:
        reader.load_strings_in_two(1)
        assert type(reader._strings) is SharedStrings  # not in shared memory: read by one
        assert len(reader._strings) > 600
    finally:
        reader.close()
    split = validate_file(path, SPLIT)
    assert split.counts == expected.counts
    assert split.rows_fingerprint == expected.rows_fingerprint


def test_a_checker_s_fork_dies_with_it(tmp_path):
    """The worker killed from outside (SIGKILL, the OOM killer) leaves no fork running."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "worker.py"
    pid_file = tmp_path / "child.pid"
    script.write_text(
        "import os, time\n"
        "from watcher.validate.forks import die_with_parent\n"
        "parent = os.getpid()\n"
        "if os.fork() == 0:\n"
        "    die_with_parent(parent)\n"
        f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    worker = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the fork did not start"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":  # killed, waiting to be reaped by init
            break
        assert time.monotonic() < deadline, "the fork outlived its worker"
        time.sleep(0.05)


def test_entities_are_read_as_xml_reads_them(tmp_path, monkeypatch):
    path = tmp_path / "entities.xlsx"
    xml = b"<si><t>&lt;&#x31;&#51;8&amp;&quot;&apos;&gt;</t></si>"
    path.write_bytes(_among_the_strings(strings_workbook(3000), xml))
    (serial_table, split_table), _ = tables(path, monkeypatch)
    assert serial_table == split_table == _openpyxl_strings(path)
    assert "<138&\"'>" in serial_table


@pytest.mark.parametrize(
    "html_only",
    [
        b"<si><t>" + b"&nGt;" * 40 + b"</t></si>",  # longer decoded than written
        b"<si><t>a&nbsp;b</t></si>",
        b"<si><t>a&amp b</t></si>",  # no semicolon
        b"<si><t>a&#0;b</t></si>",  # not an XML character
    ],
)
def test_an_entity_xml_does_not_know_makes_the_file_unreadable_in_one_process_or_two(
    tmp_path, monkeypatch, html_only
):
    """What an XML parser refuses is refused; the two halves never disagree with one."""
    path = tmp_path / "html.xlsx"
    path.write_bytes(_among_the_strings(strings_workbook(3000), html_only))
    monkeypatch.setattr("watcher.validate.text.CHUNK_BYTES", 4096)
    verdicts = [validate_file(path, options) for options in (SERIAL, SPLIT)]
    assert verdicts[0].counts == verdicts[1].counts
    assert verdicts[0].is_unreadable, verdicts[0].as_json()


def test_a_fork_s_answer_brings_its_arrays_and_a_cut_answer_is_none(tmp_path):
    """A fork sends its arrays (millions of keys or offsets) as they are in memory."""
    payload = ("ok", array("q", range(-5, 100_000)), [array("I", [7, 8])], {"n": 3})
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=send, args=(write_end, payload))
    writer.start()
    got = receive(read_end)
    writer.join()
    assert got[0] == "ok"
    assert got[3] == {"n": 3}
    assert list(got[1]) == list(payload[1])
    assert list(got[2][0]) == [7, 8]
    for cut in (0, 5, 40, 200):  # a fork killed while it wrote
        whole = os.pipe()
        threading.Thread(target=send, args=(whole[1], payload)).start()
        data = b""
        with os.fdopen(whole[0], "rb") as pipe:
            while chunk := pipe.read(1 << 16):
                data += chunk
        cut_answer = tmp_path / f"cut{cut}"
        cut_answer.write_bytes(data[:cut] if cut < 200 else data[:-1])
        assert receive(os.open(cut_answer, os.O_RDONLY)) is None
