"""A file the route does not take is answered (or left alone), never silently ignored.

Real sshd or the shared disk (sidecar mode), the emulator over HTTP, real SQLite.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import settled_as, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher import intake
from watcher.ledger import Ledger
from watcher.settings import load_settings


def world_for(make_world, sshd, mode: str, route_extra: str, settle_s: float = 0.6):
    if mode == "local":
        local = f'source = "local"\n[local]\nbase_dir = "{sshd.root}"\n'
        return make_world(daemon_extra=local, route_extra=route_extra, settle_s=settle_s)
    return make_world(route_extra=route_extra, settle_s=settle_s)


def counted(daemon, route: str, action: str) -> float:
    value = daemon.health.registry.get_sample_value(
        "isales_watcher_unmatched_files_total", {"route": route, "action": action}
    )
    return value or 0.0


def names_in(ledger_path) -> list[str]:
    ledger = Ledger(ledger_path)
    try:
        return sorted(record.name for record in ledger.rows())
    finally:
        ledger.close()


@pytest.mark.parametrize("mode", ["sftp", "local"])
async def test_a_file_of_another_kind_is_answered_once_it_has_settled(
    make_world, run_daemon, emulator, upload, sshd, mode
):
    # Pauses well inside settle_s: the file keeps changing, so it must stay where it is.
    world = world_for(make_world, sshd, mode, 'receipt_language = "zh-CN"\n', settle_s=3.0)
    [route] = load_settings(world.config).routes
    daemon = await run_daemon(world)
    # Names the daemon never touches: an upload in progress, Office's lock file.
    (world.inbox / ".list.xlsx.part").write_bytes(b"half")
    (world.inbox / "~$list.xlsx").write_bytes(b"lock")

    def still_in_the_inbox() -> None:
        assert (world.inbox / "list.csv").exists(), "answered while still being written"

    csv = b"phone\n13800138000\n" * 50
    await upload(world.inbox / "list.csv", csv, pieces=4, pause_s=0.5, between=still_in_the_inbox)
    await upload(world.inbox / "calls.xls", b"\xd0\xcf\x11\xe0 an old workbook")
    await upload(world.inbox / "good.xlsx", xlsxwriter_bytes(rows_valid(3, seed=121)))

    for name in ("list.csv", "calls.xls"):
        await wait_for(settled_as(world, name, "rejected"), 20, f"{name} in rejected/")
    await wait_for(settled_as(world, "good.xlsx", "done"), 20, "good.xlsx in done/")
    receipt = world.settled("rejected", "list.csv.result.txt").read_text(encoding="utf-8")
    print(receipt)
    assert receipt.startswith("未受理：此文件夹只接收名称符合 *.xlsx 的文件")  # noqa: RUF001
    assert "文件：list.csv" in receipt  # noqa: RUF001
    info = json.loads(world.settled("rejected", "calls.xls.result.json").read_text())
    assert (info["result"], info["unmatched"], info["receipt_language"]) == (
        "unmatched",
        {"pattern": "*.xlsx"},
        "zh_CN",
    )
    assert world.settled("rejected", "list.csv").read_bytes() == csv
    assert [u.file_name for u in emulator.uploads] == ["good.xlsx"]
    assert counted(daemon, route.name, "reject") == 2
    # The daemon's own files and the temporary names stay as they were, and unanswered.
    inbox = sorted(p.name for p in world.inbox.iterdir() if p.is_file())
    assert inbox == [".list.xlsx.part", "~$list.xlsx"]
    assert (world.inbox / ".isales-watcher" / "lease.json").is_file()
    assert names_in(world.state_dir / "ledger.sqlite3") == ["calls.xls", "good.xlsx", "list.csv"]
    rejected = sorted(p.name for p in (world.inbox / "rejected").iterdir())
    assert rejected == [
        "calls.xls",
        "calls.xls.result.json",
        "calls.xls.result.txt",
        "list.csv",
        "list.csv.result.json",
        "list.csv.result.txt",
    ]


@pytest.mark.parametrize("mode", ["sftp", "local"])
async def test_a_route_may_leave_other_files_alone_and_still_counts_them(
    make_world, run_daemon, emulator, upload, sshd, mode
):
    world = world_for(make_world, sshd, mode, 'unmatched = "ignore"\n')
    [route] = load_settings(world.config).routes
    daemon = await run_daemon(world)
    await upload(world.inbox / "notes.txt", b"call back on Monday")
    await upload(world.inbox / "first.xlsx", xlsxwriter_bytes(rows_valid(3, seed=122)))
    await wait_for(settled_as(world, "first.xlsx", "done"), 20, "first.xlsx in done/")
    # More passes over the inbox: the file is counted once, not once a pass.
    await upload(world.inbox / "second.xlsx", xlsxwriter_bytes(rows_valid(3, seed=123)))
    await wait_for(settled_as(world, "second.xlsx", "done"), 20, "second.xlsx in done/")
    assert (world.inbox / "notes.txt").read_bytes() == b"call back on Monday"
    assert not (world.inbox / "rejected").exists() or not any((world.inbox / "rejected").iterdir())
    assert names_in(world.state_dir / "ledger.sqlite3") == ["first.xlsx", "second.xlsx"]
    assert counted(daemon, route.name, "ignore") == 1
    assert counted(daemon, route.name, "reject") == 0


async def test_names_left_alone_are_sorted_once_per_listing_not_once_a_poll(
    make_world, run_daemon, emulator, upload, sshd, monkeypatch
):
    """An inbox crowded with names the route ignores: while its listing is re-used (the folder
    unchanged), a poll does not look at those names again; a list dropped later is still taken."""
    world = world_for(make_world, sshd, "sftp", 'unmatched = "ignore"\n')
    for n in range(300):
        (world.inbox / f"notes-{n:03}.txt").write_bytes(b"x")
    sorted_names: list[str] = []
    sort_name = intake.sort_name

    def counting(name, pattern):
        sorted_names.append(name)
        return sort_name(name, pattern)

    monkeypatch.setattr(intake, "sort_name", counting)
    daemon = await run_daemon(world)
    listings = daemon._intake.listings
    await wait_for(lambda: listings.reused >= 8, 30, "the crowded inbox's listing re-used")
    assert len(sorted_names) <= 300 * listings.listed  # once per listing, none per re-use
    await upload(world.inbox / "late.xlsx", xlsxwriter_bytes(rows_valid(3, seed=124)))
    await wait_for(settled_as(world, "late.xlsx", "done"), 20, "late.xlsx in done/")
    [route] = load_settings(world.config).routes
    assert counted(daemon, route.name, "ignore") == 300  # each counted once
