"""Real .xlsx files from real writers (xlsxwriter and openpyxl), made in memory for the tests."""

from __future__ import annotations

import io

import openpyxl
import xlsxwriter

HEADER = ["sessionId", "called", "caller", "callData", "customField", "recycleTime"]


def rows_valid(count: int, seed: int = 0) -> list[list[object]]:
    return [
        [
            f"s{seed}-{i}",
            f'[{{"calledNo":"139{seed % 100:02d}{i + 1:06d}"}}]',
            "95555",
            f'{{"n":{i}}}',
            "vip",
            "2026-12-31 18:00:00",
        ]
        for i in range(count)
    ]


def xlsxwriter_bytes(rows: list[list[object]], header: list[str] = HEADER) -> bytes:
    out = io.BytesIO()
    book = xlsxwriter.Workbook(out, {"in_memory": True})
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, header)
    for i, row in enumerate(rows, start=1):
        sheet.write_row(i, 0, row)
    book.close()
    return out.getvalue()


def openpyxl_bytes(rows: list[list[object]], header: list[str] = HEADER) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
