"""A task is adopted after a lost answer only with proof; otherwise the file waits, honestly."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from tests.conftest import wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.isales.faults import Fault, FaultKind
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState

FAST = (
    "request_timeout_s = 1\nreconcile_grace_s = 3\nreconcile_recheck_s = 1\n"
    "allow_insecure_http = true"
)
DAEMON = "retry_backoff_s = 0.2\nmax_backoff_s = 1"
LOST = Fault(FaultKind.status, status=500)  # no task was created; the answer says nothing


def posts(emulator) -> list:
    return [c for c in emulator.calls if "uploadFileServer" in c.path]


def rows_of(world) -> list[FileRecord]:
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    try:
        return list(reversed(ledger.rows()))
    finally:
        ledger.close()


def row_named(world, name: str) -> FileRecord | None:
    return next((r for r in rows_of(world) if r.name == name), None)


def in_state(world, name: str, state: FileState):
    def check() -> bool:
        row = row_named(world, name)
        return row is not None and row.state is state

    return check


async def drop(world, upload, name: str, rows: int, seed: int = 0) -> None:
    await upload(world.inbox / name, xlsxwriter_bytes(rows_valid(rows, seed=seed)))


async def test_a_hand_import_with_another_row_count_is_not_taken_for_ours(
    make_world, run_daemon, emulator, upload
):
    # Reproduction (a): the upload is answered 500 and creates nothing; meanwhile an operator
    # imports another list by hand in the same campaign.
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", LOST)
    await run_daemon(world)
    await drop(world, upload, "mine.xlsx", 3)
    await wait_for(lambda: bool(posts(emulator)), 20, "the POST")
    emulator.add_foreign_task(world.campaign, rows=999)
    await wait_for(in_state(world, "mine.xlsx", FileState.uncertain), 30, "mine parked")
    row = row_named(world, "mine.xlsx")
    assert row is not None
    assert row.import_task_id is None
    assert "999 records" in (row.reason or "")
    assert "ledger resolve" in (row.reason or "")
    assert not world.settled("done", "mine.xlsx.result.txt").exists()
    [folder] = (world.inbox / "processing").iterdir()
    await wait_for((folder / "mine.xlsx.result.txt").exists, 10, "the ON HOLD receipt")
    text = (folder / "mine.xlsx.result.txt").read_text()
    assert "ON HOLD" in text
    assert "IMPORTED" not in text


async def test_two_fitting_tasks_leave_the_file_uncertain(make_world, run_daemon, emulator, upload):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", LOST)
    await run_daemon(world)
    await drop(world, upload, "mine.xlsx", 3)
    await wait_for(lambda: bool(posts(emulator)), 20, "the POST")
    emulator.add_foreign_task(world.campaign, rows=3)
    emulator.add_foreign_task(world.campaign, rows=3)
    await wait_for(in_state(world, "mine.xlsx", FileState.uncertain), 30, "mine parked")
    row = row_named(world, "mine.xlsx")
    assert row is not None
    assert "2 unowned tasks fit" in (row.reason or "")
    evidence = json.loads(row.details or "{}")["reconciliation"]
    assert len(evidence["candidates"]) == 2


async def test_the_late_task_of_an_earlier_uncertain_file_is_not_stolen(
    make_world, run_daemon, emulator, upload
):
    # Reproduction (b): A's task shows up only after A was parked; B's upload then fails too.
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", LOST, LOST)
    await run_daemon(world)
    await drop(world, upload, "a.xlsx", 3, seed=1)
    await wait_for(in_state(world, "a.xlsx", FileState.uncertain), 30, "A parked")
    parked = row_named(world, "a.xlsx")
    assert parked is not None
    assert parked.submitted_at is not None
    a_sent = datetime.fromisoformat(parked.submitted_at)
    await asyncio.sleep(8)  # B is sent well after A's task began
    await drop(world, upload, "b.xlsx", 3, seed=2)
    await wait_for(lambda: len(posts(emulator)) == 2, 20, "B's POST")
    # A's import shows up now, begun just after A's POST: B's reconciliation must not take it.
    late = emulator.add_foreign_task(world.campaign, rows=3, begin_at=a_sent + timedelta(seconds=2))
    await wait_for(in_state(world, "b.xlsx", FileState.uncertain), 30, "B parked")
    await wait_for(in_state(world, "a.xlsx", FileState.done), 40, "A adopts its task")
    a = row_named(world, "a.xlsx")
    assert a is not None
    assert a.import_task_id == late.task_id
    b = row_named(world, "b.xlsx")
    assert b is not None
    assert b.state is FileState.uncertain
    assert b.import_task_id is None
    receipt = world.settled("done", "a.xlsx.result.txt").read_text()
    assert receipt.startswith(f"IMPORTED: iSales imported this list into campaign {world.campaign}")
    assert f"Matched after a lost answer: task {late.task_id}, begun at" in receipt
    assert "3 records = 3 rows" in receipt
    assert not (world.inbox / "processing" / a.id).exists()  # ON HOLD receipts gone with it


async def test_a_task_that_fits_two_lost_answers_is_taken_by_neither(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", LOST, LOST)
    await run_daemon(world)
    await drop(world, upload, "a.xlsx", 3, seed=1)
    await wait_for(in_state(world, "a.xlsx", FileState.uncertain), 30, "A parked")
    await drop(world, upload, "b.xlsx", 3, seed=2)
    await wait_for(lambda: len(posts(emulator)) == 2, 20, "B's POST")
    # Begun after both POSTs, with the row count of both: it may be either's.
    emulator.add_foreign_task(world.campaign, rows=3)
    await wait_for(in_state(world, "b.xlsx", FileState.uncertain), 30, "B parked")
    await asyncio.sleep(3)  # several rechecks of A
    for name, other in (("a.xlsx", "b.xlsx"), ("b.xlsx", "a.xlsx")):
        row = row_named(world, name)
        assert row is not None
        assert row.state is FileState.uncertain
        assert row.import_task_id is None
        assert "could also belong to file" in (row.reason or "")
        assert (row_named(world, other) or row).id in (row.reason or "")


async def test_a_task_whose_counts_arrive_late_is_waited_for(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", LOST)
    await run_daemon(world)
    await drop(world, upload, "mine.xlsx", 4)
    await wait_for(lambda: bool(posts(emulator)), 20, "the POST")
    task = emulator.add_foreign_task(world.campaign, rows=4, counts_after_s=5)
    await wait_for(in_state(world, "mine.xlsx", FileState.done), 60, "adopted once final")
    row = row_named(world, "mine.xlsx")
    assert row is not None
    assert row.import_task_id == task.task_id


async def test_a_begin_time_without_a_zone_is_read_in_the_server_s_zone(
    make_world, run_daemon, emulator, upload
):
    emulator.naive_times = True
    emulator.utc_offset = timedelta(hours=8)
    world = make_world(isales_extra=FAST + '\nserver_utc_offset = "+08:00"', daemon_extra=DAEMON)
    emulator.faults.script("upload", Fault(FaultKind.drop_after_accept))
    await run_daemon(world)
    await drop(world, upload, "zone.xlsx", 3)
    await wait_for(world.settled("done", "zone.xlsx.result.txt").exists, 40, "zone in done/")
    [accepted] = emulator.uploads
    row = row_named(world, "zone.xlsx")
    assert row is not None
    assert row.import_task_id == accepted.task_id


async def test_a_begin_time_without_a_zone_is_never_assumed_utc(
    make_world, run_daemon, emulator, upload
):
    emulator.naive_times = True
    emulator.utc_offset = timedelta(hours=8)
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", Fault(FaultKind.drop_after_accept))
    await run_daemon(world)
    await drop(world, upload, "zone.xlsx", 3)
    await wait_for(in_state(world, "zone.xlsx", FileState.uncertain), 40, "zone parked")
    row = row_named(world, "zone.xlsx")
    assert row is not None
    assert "server_utc_offset" in (row.reason or "")


async def test_window_only_matching_parks_beside_any_other_unowned_task(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST + "\nreconcile_by_counts = false", daemon_extra=DAEMON)
    emulator.add_foreign_task(
        world.campaign, rows=5, begin_at=datetime.now(UTC) - timedelta(hours=2)
    )
    emulator.faults.script("upload", Fault(FaultKind.drop_after_accept))
    await run_daemon(world)
    await drop(world, upload, "w.xlsx", 3)
    await wait_for(in_state(world, "w.xlsx", FileState.uncertain), 40, "w parked")
    row = row_named(world, "w.xlsx")
    assert row is not None
    assert "reconcile_by_counts = false" in (row.reason or "")


async def test_a_busy_isales_while_reconciling_parks_the_file_and_stops_nothing(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", Fault(FaultKind.drop_after_accept))
    busy = Fault(FaultKind.status, status=429, retry_after_s=0.1)
    emulator.faults.script("query_tasks", *[busy] * 12)
    daemon = await run_daemon(world)
    await drop(world, upload, "busy.xlsx", 3)
    await wait_for(in_state(world, "busy.xlsx", FileState.done), 60, "busy adopted in the end")
    assert daemon.failed is None
    assert not daemon.stop.is_set()
    [accepted] = emulator.uploads
    row = row_named(world, "busy.xlsx")
    assert row is not None
    assert row.import_task_id == accepted.task_id
    assert len(posts(emulator)) == 1
