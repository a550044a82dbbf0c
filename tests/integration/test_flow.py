"""A dropped file, end to end: real sshd, the emulator over HTTP, real SQLite, real workbooks."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import cli, wait_for
from tests.workbooks import openpyxl_bytes, rows_valid, xlsxwriter_bytes


async def test_a_valid_file_is_imported_once_and_lands_in_done(
    make_world, run_daemon, emulator, upload, sshd
):
    world = make_world()
    data = openpyxl_bytes(rows_valid(25))
    await run_daemon(world)
    await upload(world.inbox / "list.xlsx", data)

    receipt = world.settled("done", "list.xlsx.result.txt")
    await wait_for(receipt.exists, what="the receipt in done/")
    assert world.settled("done", "list.xlsx").read_bytes() == data
    assert not (world.inbox / "list.xlsx").exists()

    [call] = emulator.uploads
    assert call.server_id == "fs-1"
    assert call.campaign_id == world.campaign
    assert call.file_name == "list.xlsx"
    folder = call.file_path  # relative to the server's default path, as iSales wants it
    assert folder.startswith(f"/inbox/{world.inbox.name}/processing/")
    assert call.fetched_sha256 == hashlib.sha256(data).hexdigest(), call.fetch_error

    info = json.loads(world.settled("done", "list.xlsx.result.json").read_text())
    assert info["verdict"] == "imported"
    assert info["import_task_id"] == call.task_id
    assert info["import"]["succNum"] == 25
    text = world.settled("done", "list.xlsx.result.txt").read_text()
    assert "IMPORTED" in text
    assert call.task_id in text
    assert "Rows: 25 imported" in text
    assert list((world.inbox / "processing").iterdir()) == []


async def test_an_invalid_file_is_rejected_with_rows_and_no_api_call(
    make_world, run_daemon, emulator, upload
):
    world = make_world()
    rows = rows_valid(6)
    rows[2][1] = '[{"calledNo":"12-34"}]'  # Excel row 4
    rows[4][5] = "2026-02-30 10:00:00"  # Excel row 6
    await run_daemon(world)
    await upload(world.inbox / "bad.xlsx", xlsxwriter_bytes(rows))

    receipt = world.settled("rejected", "bad.xlsx.result.txt")
    await wait_for(receipt.exists, what="the receipt in rejected/")
    text = receipt.read_text()
    assert "REJECTED" in text
    assert "row 4, column called" in text
    assert "row 6, column recycleTime" in text
    info = json.loads(world.settled("rejected", "bad.xlsx.result.json").read_text())
    assert {(p["row"], p["kind"]) for p in info["validation"]["examples"]} == {
        (4, "calledno_invalid"),
        (6, "recycletime_invalid"),
    }
    assert emulator.uploads == []
    assert not any("uploadFileServer" in call.path for call in emulator.calls)


async def test_the_same_content_under_another_name_is_a_duplicate(
    make_world, run_daemon, emulator, upload
):
    world = make_world()
    data = xlsxwriter_bytes(rows_valid(5, seed=3))
    await run_daemon(world)
    await upload(world.inbox / "first.xlsx", data)
    await wait_for(world.settled("done", "first.xlsx.result.txt").exists, what="first in done/")
    await upload(world.inbox / "again.xlsx", data)

    receipt = world.settled("rejected", "again.xlsx.result.txt")
    await wait_for(receipt.exists, what="the duplicate in rejected/")
    assert "first.xlsx" in receipt.read_text()
    assert "duplicate" in receipt.read_text()
    info = json.loads(world.settled("rejected", "again.xlsx.result.json").read_text())
    assert info["duplicate_of"]["name"] == "first.xlsx"
    assert len(emulator.uploads) == 1


async def test_a_slow_upload_is_not_claimed_before_it_is_complete(
    make_world, run_daemon, emulator, upload
):
    # settle_s is shorter than the pauses: only the ZIP check can hold the file back.
    world = make_world(settle_s=0.5)
    data = xlsxwriter_bytes(rows_valid(3000, seed=5))
    await run_daemon(world)
    checks = []

    def still_in_the_inbox() -> None:
        checks.append(1)
        assert (world.inbox / "slow.xlsx").exists(), "claimed while still uploading"
        processing = world.inbox / "processing"
        assert not processing.exists() or not any(processing.iterdir())

    await upload(world.inbox / "slow.xlsx", data, pieces=6, pause_s=1.2, between=still_in_the_inbox)
    assert len(checks) == 5
    await wait_for(world.settled("done", "slow.xlsx.result.txt").exists, what="slow file in done/")
    [call] = emulator.uploads
    assert call.fetched_sha256 == hashlib.sha256(data).hexdigest()
    assert world.settled("done", "slow.xlsx").read_bytes() == data


async def test_the_configured_unpacked_size_limit_rejects_a_workbook(
    make_world, run_daemon, emulator, upload
):
    world = make_world(daemon_extra="[validation]\nmax_unpacked_bytes = 5000\n")
    await run_daemon(world)
    await upload(world.inbox / "big.xlsx", xlsxwriter_bytes(rows_valid(50, seed=61)))
    receipt = world.settled("rejected", "big.xlsx.result.txt")
    await wait_for(receipt.exists, what="big.xlsx in rejected/")
    assert "too large when unpacked" in receipt.read_text()
    assert emulator.uploads == []


@pytest.mark.parametrize("mode", ["sftp", "local"])
async def test_a_duplicate_is_imported_again_on_an_operator_s_word(
    make_world, run_daemon, emulator, upload, sshd, mode
):
    # In sidecar mode the command acts through the local disk, as the daemon does: the SFTP
    # port configured is closed, and nothing needs it (iSales fetches from its own server).
    if mode == "local":
        local = f'source = "local"\n[local]\nbase_dir = "{sshd.root}"\n'
        world = make_world(daemon_extra=local, sftp_port=9, server_id="fs-1")
    else:
        world = make_world()
    data = xlsxwriter_bytes(rows_valid(5, seed=91))
    await run_daemon(world)
    await upload(world.inbox / "round1.xlsx", data)
    await wait_for(world.settled("done", "round1.xlsx.result.txt").exists, what="round1 in done/")
    await upload(world.inbox / "round2.xlsx", data)
    await wait_for(
        world.settled("rejected", "round2.xlsx.result.txt").exists,
        what="round2 rejected as a duplicate",
    )
    from watcher.ledger import Ledger

    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    [row] = [r for r in ledger.rows() if r.name == "round2.xlsx"]
    ledger.close()
    code, output = await cli(
        "ledger",
        "--config",  # before the sub-command: as good as after it
        str(world.config),
        "reprocess",
        row.id,
        "--reason",
        "second call round, agreed with the business",
        "--by",
        "ops-li",
    )
    assert code == 0, output
    await wait_for(world.settled("done", "round2.xlsx.result.txt").exists, 30, "round2 in done/")
    assert not world.settled("rejected", "round2.xlsx").exists()
    assert not world.settled("rejected", "round2.xlsx.result.txt").exists()
    assert len(emulator.uploads) == 2  # asked for, and recorded as asked for
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    steps = ledger.transitions(row.id)
    ledger.close()
    assert any(s["actor"] == "ops-li" and "second call round" in s["reason"] for s in steps)


async def test_one_folder_per_campaign(make_world, run_daemon, emulator, upload):
    world = make_world()
    text = world.config.read_text()
    text = text.replace(
        f'inbox = "{world.inbox}"\ncampaign_id = "{world.campaign}"',
        f'inbox = "{world.inbox}/{{campaign_id}}"',
    )
    world.config.write_text(text)
    for campaign in ("1647", "2001"):
        (world.inbox / campaign).mkdir()
        emulator.campaigns.add(campaign)
    (world.inbox / "not a campaign").mkdir()
    await run_daemon(world)
    await upload(world.inbox / "1647" / "a.xlsx", xlsxwriter_bytes(rows_valid(3, seed=111)))
    await upload(world.inbox / "2001" / "b.xlsx", xlsxwriter_bytes(rows_valid(3, seed=112)))
    await wait_for((world.inbox / "1647" / "done" / "a.xlsx.result.txt").exists, what="a in done/")
    await wait_for((world.inbox / "2001" / "done" / "b.xlsx.result.txt").exists, what="b in done/")
    assert sorted((u.campaign_id, u.file_name) for u in emulator.uploads) == [
        ("1647", "a.xlsx"),
        ("2001", "b.xlsx"),
    ]
    receipt = (world.inbox / "2001" / "done" / "b.xlsx.result.txt").read_text()
    assert "Campaign 2001, route" in receipt


async def test_the_gate_rejects_broken_files_and_ignores_temporary_names(
    make_world, run_daemon, emulator, upload
):
    from tests.corpus import GOOD, xls_file

    world = make_world(daemon_extra="incomplete_timeout_s = 2\n")
    await run_daemon(world)
    await upload(world.inbox / "text.xlsx", b"sessionId,called\n1,[]\n")
    await upload(world.inbox / "old.xlsx", xls_file())
    await upload(world.inbox / "cut.xlsx", GOOD[: len(GOOD) // 2])  # an upload that died
    await upload(world.inbox / ".hidden.xlsx", GOOD)
    await upload(world.inbox / "~$lock.xlsx", GOOD)
    await upload(world.inbox / "big.xlsx.part", GOOD)
    for name, words in (
        ("text.xlsx", "not an .xlsx workbook"),
        ("old.xlsx", "Excel 97-2003"),
        ("cut.xlsx", "The file is incomplete: its end is missing"),
    ):
        receipt = world.settled("rejected", f"{name}.result.txt")
        await wait_for(receipt.exists, 30, f"{name} in rejected/")
        assert words in receipt.read_text(), receipt.read_text()
    for name in (".hidden.xlsx", "~$lock.xlsx", "big.xlsx.part"):
        assert (world.inbox / name).exists(), name
    assert emulator.uploads == []


async def test_a_crowded_inbox_is_worked_through_oldest_first(make_world, run_daemon, emulator):
    import os
    import sqlite3

    world = make_world(daemon_extra="max_claims_per_poll = 4\n")
    names = [f"f{i:02d}.xlsx" for i in range(20)]
    for i, name in enumerate(names):
        path = world.inbox / name
        path.write_bytes(xlsxwriter_bytes(rows_valid(2, seed=200 + i)))
        os.utime(path, (1_700_000_000 + (20 - i) * 60,) * 2)  # f19 is the oldest
    await run_daemon(world)
    await wait_for(
        lambda: all(world.settled("done", f"{n}.result.txt").exists() for n in names),
        60,
        "all 20 files in done/",
    )
    with sqlite3.connect(world.state_dir / "ledger.sqlite3") as db:
        claimed = [name for (name,) in db.execute("SELECT name FROM files ORDER BY rowid")]
    assert claimed[:4] == ["f19.xlsx", "f18.xlsx", "f17.xlsx", "f16.xlsx"]
    assert len(emulator.uploads) == 20


async def test_a_chinese_file_name_with_spaces(make_world, run_daemon, emulator, upload):
    world = make_world()
    name = "三月 外呼名单 (第2批).xlsx"
    await run_daemon(world)
    await upload(world.inbox / name, xlsxwriter_bytes(rows_valid(3, seed=131)))
    await wait_for(world.settled("done", f"{name}.result.txt").exists, what="the file in done/")
    [call] = emulator.uploads
    assert call.file_name == name
    assert call.fetched_sha256 is not None
    assert name in world.settled("done", f"{name}.result.txt").read_text()
