"""Example workbooks: the empty template, and the demo's valid and invalid lists."""

from __future__ import annotations

from pathlib import Path

import xlsxwriter

__all__ = ("write_invalid_sample", "write_template", "write_valid_sample")

HEADER = ["sessionId", "called", "caller", "callData", "customField", "recycleTime", "priority"]


def _write(path: Path, rows: list[list[object]]) -> None:
    workbook = xlsxwriter.Workbook(str(path))
    sheet = workbook.add_worksheet("calls")
    text = workbook.add_format({"num_format": "@"})
    sheet.set_column(0, len(HEADER) - 1, 24, text)
    bold = workbook.add_format({"bold": True})
    sheet.write_row(0, 0, HEADER, bold)
    for index, row in enumerate(rows, start=1):
        sheet.write_row(index, 0, row)
    workbook.close()


def write_template(path: Path) -> None:
    """The template with its header and one example row (text-formatted, so numbers stay exact)."""
    _write(
        path,
        [
            [
                "order-0001",
                '[{"calledNo":"13800138000","delayTime":"0"}]',
                "95555",
                '{"name":"Li Lei"}',
                "VIP",
                "2026-12-31 18:00:00",
                "3",
            ]
        ],
    )


def write_valid_sample(path: Path, rows: int = 20, *, seed: int = 0) -> None:
    """A valid list of ``rows`` customers; ``seed`` changes the content."""
    _write(
        path,
        [
            [
                f"demo-{seed}-{i:04d}",
                f'[{{"calledNo":"1380013{seed % 10}{i:04d}"}}]',
                "95555",
                f'{{"order":"{seed}-{i}"}}',
                "",
                "2026-12-31 18:00:00",
                "",
            ]
            for i in range(rows)
        ],
    )


def write_invalid_sample(path: Path) -> None:
    """A list with a bad row 3 (calledNo), row 5 (recycleTime) and row 6 (empty called)."""
    rows: list[list[object]] = [
        [f"bad-{i}", f'[{{"calledNo":"1390013{i:04d}"}}]', "", "", "", "", ""] for i in range(6)
    ]
    rows[1][1] = '[{"calledNo":"139-0013-0001"}]'
    rows[3][5] = "2026-02-30 10:00:00"
    rows[4][1] = ""
    _write(path, rows)
