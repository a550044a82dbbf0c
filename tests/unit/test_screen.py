"""Rows checked a batch at a time find exactly what rows checked one by one find.

``RowChecker.check_many`` and ``RowsFingerprint.add_many`` pass plain rows in loops that run
in C and leave the rest to ``check``; whatever the rows hold, the report, the repeated values
and the fingerprint must be those of ``check`` and ``add`` row by row, the definition.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import pytest

from watcher.validate import Report
from watcher.validate.fingerprint import RowsFingerprint
from watcher.validate.rules import RowChecker

PLAIN = {
    "sessionId": ["s-1", "A" * 32, "0123456789", "42", "x y"],
    "called": [
        '[{"calledNo":"13800138000","delayTime":"0","type":"1"}]',
        '[{"calledNo":"13800138001"}]',
        '[{"calledNo":"1*#","delayTime":"7200"}]',
        '[{"calledNo":"139","delayTime":"0100"},{"calledNo":"138","type":"x"}]',
        "[{'calledNo':13800138000}]",
        "[{'calledNo':0}]",
        '[{"calledNo":"' + "9" * 24 + '"}]',
    ],
    "caller": ["02100000000", "1" * 24, "主叫"],
    "callData": ['{"name":"郭杨"}', "x" * 1024, "plain text"],
    "customField": ["batch-1|agent=3", "y" * 200],
    "recycleTime": ["2026-01-01 08:00:00", "2024-02-29 23:59:59"],
    "priority": [1, 3, 5],
}
HOSTILE = {
    "sessionId": [" s-1 ", "A" * 33, "", None, 7, 1.0, True, "\u3000s-1", "s\x1fid", "\ud800"],
    "called": [
        '[{"calledNo":"1","delayTime":"7201"}]',
        '[{"calledNo":"1","type":"a\nb"}]',
        '[{"calledNo":"1"},]',
        '[{"calledNo":"1"}]\n',
        ' [{"calledNo":"1"}]',
        "[{'calledNo':0138}]",
        '[{"calledNo":"' + "9" * 25 + '"}]',
        '[{"calledNo":"\uff11\uff12\uff13"}]',
        '[{"calledNo":"12a"}]',
        '[{"calledNo":""}]',
        '[{"calledNo":1.5}]',
        "[]",
        "{}",
        "13800138000",
        13800138000,
        12345678901234567890,
        "",
        None,
        '[{"calledNo":"1","delayTime":"-1"}]',
        '[{"calledNo":"1", "delayTime":"5"}]',
        '[{"delayTime":"5","calledNo":"1"}]',
    ],
    "caller": ["1" * 25, " 1 ", 2100000000, None, ""],
    "callData": ["x" * 1025, "{not json", " " * 1030, None, 3.5],
    "customField": ["y" * 201, None, "", False],
    "recycleTime": [
        "2025-02-30 10:00:00",
        "2025/02/15 10:00",
        " 2026-01-01 08:00:00",
        "2026-01-01T08:00:00",
        "\uff12\uff10\uff12\uff16-01-01 08:00:00",
        "2026-01-01 24:00:00",
        45000.5,
        datetime(2026, 1, 1, 8),  # noqa: DTZ001 - a cell's value has no zone
        "",
        None,
        True,
    ],
    "priority": [0, 6, "3", " 2 ", "high", 2.0, True, None, ""],
}
ORDER = ("sessionId", "called", "caller", "callData", "customField", "recycleTime", "priority")


def _rows(rnd: random.Random, columns: list[str], count: int, hostile: float) -> list[Any]:
    rows: list[tuple[int, list[Any]]] = []
    number = 1
    for _ in range(count):
        number += 1 if rnd.random() < 0.9 else rnd.randint(2, 5)  # gaps: blank rows
        pool = HOSTILE if rnd.random() < hostile else PLAIN
        values = [rnd.choice((pool if rnd.random() < 0.5 else PLAIN)[name]) for name in columns]
        if rnd.random() < 0.05:
            values = values[: rnd.randint(0, len(values))]  # trailing cells left empty
        rows.append((number, values))
    return rows


def _by_rows(columns: dict[int, str], rows: list[Any], *, call_data_json: bool) -> Any:
    report = Report(examples_per_kind=10_000)
    checker = RowChecker(report, columns, call_data_json=call_data_json)
    fingerprint = RowsFingerprint(columns)
    data = 0
    for number, values in rows:
        if checker.check(number, values):
            fingerprint.add(values)
            data += 1
    checker.finish()
    return report.as_json(), fingerprint.hexdigest(), data


def _by_batches(
    columns: dict[int, str], rows: list[Any], size: int, *, call_data_json: bool
) -> Any:
    report = Report(examples_per_kind=10_000)
    checker = RowChecker(report, columns, call_data_json=call_data_json)
    fingerprint = RowsFingerprint(columns)
    data = 0
    for start in range(0, len(rows), size):
        found = checker.check_many(rows[start : start + size])
        fingerprint.add_many(found)
        data += len(found)
    checker.finish()
    return report.as_json(), fingerprint.hexdigest(), data


@pytest.mark.parametrize("seed", range(12))
def test_batches_find_what_rows_one_by_one_find(seed: int) -> None:
    rnd = random.Random(seed)
    names = list(ORDER)
    if seed % 3 == 1:
        names.remove(rnd.choice([n for n in names if n != "called"]))
    if seed % 3 == 2:
        rnd.shuffle(names)
    columns = dict(enumerate(names))
    rows = _rows(rnd, names, 3000, hostile=(0.01, 0.2, 0.6)[seed % 3])
    call_data_json = seed % 2 == 1
    expected = _by_rows(columns, rows, call_data_json=call_data_json)
    for size in (1, 7, 1024):
        assert _by_batches(columns, rows, size, call_data_json=call_data_json) == expected
    assert expected[2] > 0


def test_repeats_found_in_batches_name_the_first_row() -> None:
    """A number first met on a row the rules read, then on plain rows, and the other way."""
    columns = dict(enumerate(ORDER))
    plain = [PLAIN[name][0] for name in ORDER]
    odd = [*plain]
    odd[1] = '[{"calledNo":"13800138000"}, {"calledNo":"1"}]'  # a space: the rules read it
    rows = [(2, [*odd]), (3, [*plain]), (4, [*plain]), (9, [*odd]), (10, [*plain])]
    for size in (2, 5):
        assert _by_batches(columns, rows, size, call_data_json=False) == _by_rows(
            columns, rows, call_data_json=False
        )
    report_json = _by_rows(columns, rows, call_data_json=False)[0]
    assert "row 2" in str(report_json)


def test_a_type_that_spells_a_calledno_adds_no_number() -> None:
    """The screen passes any type free of quotes; what it spells is no number of the row."""
    columns = dict(enumerate(ORDER))
    plain = [PLAIN[name][0] for name in ORDER]
    spelled = [*plain]
    spelled[1] = '[{"calledNo":"1","type":"x},{\'calledNo\':999"}]'
    other = [*plain]
    other[1] = '[{"calledNo":"999"}]'
    rows = [(2, spelled), (3, other)]
    expected = _by_rows(columns, rows, call_data_json=False)
    assert "duplicate_called_no" not in str(expected[0])
    assert _by_batches(columns, rows, 2, call_data_json=False) == expected
