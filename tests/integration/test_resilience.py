"""The daemon keeps going when the file server misbehaves, and never loops on a poison file."""

from __future__ import annotations

import asyncio

import structlog

from tests.conftest import wait_for
from tests.faultproxy import FaultProxy
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.ledger import Ledger
from watcher.models import FileState


async def test_a_dropped_connection_is_reopened(
    make_world, run_daemon, emulator, upload, sshd, tmp_path
):
    proxy = await FaultProxy(sshd.host, sshd.port).start()
    known_hosts = tmp_path / "kh"
    known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {sshd.host_pub}\n")
    world = make_world(sftp_port=proxy.port, known_hosts=known_hosts, server_id="fs-1")
    try:
        with structlog.testing.capture_logs() as logs:
            await run_daemon(world)
            await upload(world.inbox / "one.xlsx", xlsxwriter_bytes(rows_valid(3, seed=31)))
            await wait_for(world.settled("done", "one.xlsx.result.txt").exists, 30, "one in done/")
            # Cut every connection and refuse new ones for a while: the server is "down".
            proxy.reset = True
            for task in list(proxy._tasks):
                task.cancel()
            await wait_for(
                lambda: any(e["event"] == "sftp.unavailable" for e in logs),
                20,
                "the daemon noticing the outage",
            )
            await upload(world.inbox / "two.xlsx", xlsxwriter_bytes(rows_valid(3, seed=32)))
            await asyncio.sleep(1)
            proxy.reset = False  # back up
            await wait_for(world.settled("done", "two.xlsx.result.txt").exists, 60, "two in done/")
        assert sum(e["event"] == "sftp.connected" for e in logs) >= 2
        assert sorted(u.file_name for u in emulator.uploads) == ["one.xlsx", "two.xlsx"]
    finally:
        await proxy.stop()


async def test_an_inbox_whose_processing_folder_cannot_be_made_is_refused_before_any_claim(
    make_world, run_daemon, emulator, upload
):
    world = make_world()
    (world.inbox / "processing").write_text("a file where the processing folder should be")
    await upload(world.inbox / "stuck.xlsx", xlsxwriter_bytes(rows_valid(2, seed=41)))
    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        await wait_for(
            lambda: any(e["event"] == "route.scan_failed" for e in logs), 30, "the refusal"
        )
        await asyncio.sleep(2)  # several more polls: said once, not every poll
    [refusal] = [e for e in logs if e["event"] == "route.scan_failed"]
    assert f"The daemon needs {world.inbox}/processing to be a real folder" in refusal["error"]
    assert "not a directory" in refusal["error"]
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    rows = ledger.rows()
    ledger.close()
    assert rows == []  # nothing half-claimed: no claim was even begun
    assert (world.inbox / "stuck.xlsx").exists()
    assert emulator.uploads == []


async def test_a_file_taken_out_of_processing_is_recorded_as_lost(make_world, run_daemon, emulator):
    from watcher.models import RemoteEntry

    world = make_world()
    # A claim whose file somebody deleted from processing/ while the daemon was down.
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    row = ledger.insert_claim(
        route="x",
        campaign_id=world.campaign,
        inbox=str(world.inbox),
        entry=RemoteEntry("gone.xlsx", 10, 1),
    )
    ledger.transition(row.id, FileState.claimed, expect=FileState.claiming)
    ledger.close()
    await run_daemon(world)

    def lost() -> bool:
        check = Ledger(world.state_dir / "ledger.sqlite3")
        try:
            return check.get(row.id).state is FileState.lost
        finally:
            check.close()

    await wait_for(lost, 20, "the row marked lost")
    check = Ledger(world.state_dir / "ledger.sqlite3")
    assert "removed from processing/" in (check.get(row.id).reason or "")
    check.close()
    assert emulator.uploads == []


async def test_a_ledger_held_by_another_process_pauses_the_daemon_and_never_stops_it(
    make_world, run_daemon, emulator, upload
):
    """A person's `sqlite3` (or a backup) holding a write lock: the daemon waits, then goes on."""
    import sqlite3

    from tests.conftest import settled_as

    world = make_world()
    daemon = await run_daemon(world)
    holder = sqlite3.connect(world.state_dir / "ledger.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held
    with structlog.testing.capture_logs() as logs:
        await upload(world.inbox / "during.xlsx", xlsxwriter_bytes(rows_valid(3, seed=77)))
        await wait_for(lambda: any(e["event"] == "ledger.busy" for e in logs), 30, "ledger.busy")
        await asyncio.sleep(3)  # several more passes while it is held
        assert not daemon.stop.is_set()
        holder.execute("COMMIT")
        holder.close()
        await wait_for(settled_as(world, "during.xlsx", "done"), 60, "during.xlsx done")
    assert daemon.failed is None
    assert not any(e["event"] == "ledger.failed" for e in logs)
    assert [u.file_name for u in emulator.uploads] == ["during.xlsx"]
