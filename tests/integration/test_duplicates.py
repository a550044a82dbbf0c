"""The same list twice is a duplicate, however it was written; a task once owned stays owned."""

from __future__ import annotations

import io
import json
from datetime import datetime

import openpyxl
import xlsxwriter

from tests.conftest import wait_for
from tests.workbooks import HEADER, rows_valid, xlsxwriter_bytes


def stamp(seconds: int) -> datetime:
    return datetime(2026, 11, 29, 9, 0, seconds)  # noqa: DTZ001 - docProps want a naive time


def exported_at(rows: list[list[object]], when: datetime) -> bytes:
    """The same rows as a CRM exports them, stamped with the export time (docProps)."""
    out = io.BytesIO()
    book = xlsxwriter.Workbook(out, {"in_memory": True})
    book.set_properties({"created": when, "title": f"export {when:%H:%M:%S}"})
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, HEADER)
    for i, row in enumerate(rows, start=1):
        sheet.write_row(i, 0, row)
    book.close()
    return out.getvalue()


def resaved(rows: list[list[object]]) -> bytes:
    """The same list re-saved by another program: columns reordered, the phone as a number."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    order = list(reversed(HEADER))
    sheet.append(order)
    for row in reversed(rows):
        sheet.append([row[HEADER.index(name)] for name in order])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def test_the_same_rows_exported_twice_are_a_duplicate(
    make_world, run_daemon, emulator, upload
):
    world = make_world()
    rows = rows_valid(6, seed=51)
    first = exported_at(rows, stamp(0))
    again = exported_at(rows, stamp(4))
    other_program = resaved(rows)
    assert len({first, again, other_program}) == 3  # three different byte strings
    await run_daemon(world)
    await upload(world.inbox / "crm.xlsx", first)
    await wait_for(world.settled("done", "crm.xlsx.result.txt").exists, what="crm in done/")
    await upload(world.inbox / "crm-again.xlsx", again)
    await upload(world.inbox / "resaved.xlsx", other_program)
    for name in ("crm-again.xlsx", "resaved.xlsx"):
        receipt = world.settled("rejected", f"{name}.result.txt")
        await wait_for(receipt.exists, what=f"{name} rejected as a duplicate")
        text = receipt.read_text()
        assert "The same rows were imported before as crm.xlsx" in text
        info = json.loads(world.settled("rejected", f"{name}.result.json").read_text())
        assert info["duplicate_of"]["name"] == "crm.xlsx"
        assert info["duplicate_of"]["import_task_id"] == emulator.uploads[0].task_id
    assert [u.file_name for u in emulator.uploads] == ["crm.xlsx"]


async def test_duplicates_by_bytes_lets_a_re_export_through(
    make_world, run_daemon, emulator, upload
):
    world = make_world(route_extra='duplicates = "bytes"')
    rows = rows_valid(4, seed=52)
    await run_daemon(world)
    await upload(world.inbox / "a.xlsx", exported_at(rows, stamp(0)))
    await wait_for(world.settled("done", "a.xlsx.result.txt").exists, what="a in done/")
    await upload(world.inbox / "b.xlsx", exported_at(rows, stamp(4)))
    await wait_for(world.settled("done", "b.xlsx.result.txt").exists, what="b in done/")
    await upload(world.inbox / "c.xlsx", exported_at(rows, stamp(4)))
    await wait_for(world.settled("rejected", "c.xlsx.result.txt").exists, what="c rejected")
    assert [u.file_name for u in emulator.uploads] == ["a.xlsx", "b.xlsx"]


async def test_different_rows_are_not_a_duplicate(make_world, run_daemon, emulator, upload):
    world = make_world()
    await run_daemon(world)
    rows = rows_valid(4, seed=53)
    await upload(world.inbox / "a.xlsx", xlsxwriter_bytes(rows))
    await wait_for(world.settled("done", "a.xlsx.result.txt").exists, what="a in done/")
    changed = [list(row) for row in rows]
    changed[2][4] = "gold"  # one cell differs
    await upload(world.inbox / "b.xlsx", xlsxwriter_bytes(changed))
    await wait_for(world.settled("done", "b.xlsx.result.txt").exists, what="b in done/")
    assert len(emulator.uploads) == 2
