"""The gate: temporary names, stability on our own clock, and the ZIP completeness check."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.gate import (
    TAIL_BYTES,
    Name,
    SeenOnce,
    StabilityGate,
    ZipVerdict,
    check_zip,
    is_candidate,
    sort_name,
)
from watcher.models import RemoteEntry


def verdict(data: bytes) -> ZipVerdict:
    return check_zip(data[:8], data[-TAIL_BYTES:], len(data))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("calls.xlsx", True),
        ("CALLS.XLSX", True),
        (".calls.xlsx", False),
        ("~$calls.xlsx", False),
        ("calls.xlsx.part", False),
        ("calls.xlsx.filepart", False),
        ("calls.tmp", False),
        ("calls.xlsx.crdownload", False),
        ("calls.csv", False),
        ("calls.xlsx.writing", False),
    ],
)
def test_candidates(name, expected):
    assert is_candidate(name, "*.xlsx") is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("calls.xlsx", Name.candidate),
        ("list.csv", Name.unmatched),
        ("calls.xls", Name.unmatched),
        ("calls.XLSM", Name.unmatched),
        ("README", Name.unmatched),
        ("calls.xlsx.part", Name.ignored),
        ("~$calls.xlsx", Name.ignored),
        (".calls.csv", Name.ignored),
        # What the daemon itself writes in an inbox: its lease, access probes, files being
        # written; and receipts, whatever brought one there.
        (".isales-watcher-lease.json", Name.ignored),
        (".isales-watcher-probe-1a2b3c4d", Name.ignored),
        (".isales-watcher-0123456789abcdef.tmp", Name.ignored),
        ("calls.xlsx.result.txt", Name.ignored),
        ("calls.xlsx.RESULT.JSON", Name.ignored),
    ],
)
def test_names_the_route_does_not_take_are_told_from_temporary_ones(name, expected):
    assert sort_name(name, "*.xlsx") is expected


def test_an_unmatched_file_is_counted_once_per_version():
    seen = SeenOnce()
    first = RemoteEntry("list.csv", 10, 1)
    assert seen.is_new("/in/list.csv", first)
    assert not seen.is_new("/in/list.csv", first)
    assert seen.is_new("/in/list.csv", RemoteEntry("list.csv", 11, 2))  # it changed
    seen.retain([], "/in/")
    assert seen.is_new("/in/list.csv", RemoteEntry("list.csv", 11, 2))  # gone, then back


def test_a_complete_workbook_passes_and_every_truncation_does_not():
    data = xlsxwriter_bytes(rows_valid(200))
    assert verdict(data) is ZipVerdict.complete
    for cut in (1, 3, 10, 100, len(data) // 2, len(data) - 23, len(data) - 1):
        assert verdict(data[:cut]) is ZipVerdict.incomplete, cut
    assert verdict(b"") is ZipVerdict.incomplete


def test_a_zip_with_a_comment_and_trailing_garbage():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.txt", "x" * 1000)
        archive.comment = b"PK\x05\x06 looks like a record but is a comment"
    data = out.getvalue()
    assert verdict(data) is ZipVerdict.complete
    assert verdict(data + b"\0" * 10) is ZipVerdict.incomplete


def test_not_a_zip_and_old_excel():
    assert verdict(b"sessionId,called\n1,2\n") is ZipVerdict.not_zip
    assert verdict(bytes.fromhex("d0cf11e0a1b11ae1") + b"\0" * 600) is ZipVerdict.old_excel


def test_stability_counts_on_our_clock_not_the_remote_mtime():
    now = [100.0]
    gate = StabilityGate(settle_s=10, clock=lambda: now[0])
    entry = RemoteEntry("a.xlsx", 10, mtime=5)  # an mtime far in the past means nothing
    assert gate.observe("k", entry) == 0
    now[0] += 6
    assert gate.observe("k", entry) == 6
    now[0] += 1
    assert gate.observe("k", RemoteEntry("a.xlsx", 11, mtime=5)) == 0  # it grew: start again
    now[0] += 10
    assert gate.observe("k", RemoteEntry("a.xlsx", 11, mtime=5)) == 10
    gate.retain([], "")
    assert gate.observe("k", RemoteEntry("a.xlsx", 11, mtime=5)) == 0
