"""A file's or an inbox's trouble stays with it; a stop always stops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import pytest
import structlog

from tests.conftest import cli, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.daemon import Daemon
from watcher.errors import FileGoneError, WorkbookRejected
from watcher.settings import load_settings
from watcher.sources.sftp import SftpSource


class VanishingSource(SftpSource):
    """The real SFTP source, but named files vanish between the listing and the probe."""

    def __init__(self, *args: Any, vanish: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vanish = vanish

    async def read_ends(self, path: str, size: int, head: int, tail: int) -> tuple[bytes, bytes]:
        if os.path.basename(path) in self.vanish:
            raise FileGoneError(f"reading {path}: no such file")
        return await super().read_ends(path, size, head, tail)


async def test_a_file_that_vanishes_before_its_claim_stops_nothing(make_world, emulator, upload):
    world = make_world()
    settings = load_settings(world.config)
    source = VanishingSource(settings.sftp, vanish={"gone.xlsx"})
    daemon = Daemon(settings, source=source)
    runner = asyncio.create_task(daemon.run())
    try:
        with structlog.testing.capture_logs() as logs:
            await wait_for(daemon.ready.is_set, 30, "the daemon ready")
            await upload(world.inbox / "gone.xlsx", xlsxwriter_bytes(rows_valid(3, seed=81)))
            await upload(world.inbox / "fine.xlsx", xlsxwriter_bytes(rows_valid(4, seed=82)))
            await wait_for(world.settled("done", "fine.xlsx.result.txt").exists, 30, "fine done")
            await asyncio.sleep(1)
        assert not runner.done()  # still running
        said = [e for e in logs if e["event"] == "file.vanished_before_claim"]
        assert said
        assert "gone.xlsx" in said[0]["file"]
    finally:
        daemon.request_stop()
        await asyncio.wait_for(runner, 30)


async def test_an_unreadable_inbox_is_said_once_and_the_others_go_on(
    make_world, emulator, upload, tmp_path
):
    world = make_world()
    text = world.config.read_text()
    broken = world.inbox.parent / f"{world.inbox.name}-not-a-folder"
    broken.write_text("someone made the inbox a file")
    text += f'\n[[routes]]\nname = "missing"\ninbox = "{broken}"\ncampaign_id = "c-missing"\n'
    world.config.write_text(text)
    daemon = Daemon(load_settings(world.config))
    runner = asyncio.create_task(daemon.run())
    try:
        with structlog.testing.capture_logs() as logs:
            await wait_for(daemon.ready.is_set, 30, "the daemon ready")
            await upload(world.inbox / "ok.xlsx", xlsxwriter_bytes(rows_valid(3, seed=83)))
            await wait_for(world.settled("done", "ok.xlsx.result.txt").exists, 30, "ok done")
        assert not runner.done()
        failed = [e for e in logs if e["event"] == "route.scan_failed"]
        assert len(failed) == 1  # said once, not at every poll
        assert failed[0]["route"] == "missing"
    finally:
        daemon.request_stop()
        await asyncio.wait_for(runner, 30)


async def test_a_stop_stops_when_the_log_pipe_is_closed(make_world, emulator):
    world = make_world(control_listen="127.0.0.1:0")
    read_end, write_end = os.pipe()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        "run",
        "--config",
        str(world.config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=write_end,
    )
    os.close(write_end)
    try:
        first = os.read(read_end, 4096)  # it logs: it is up
        assert first
        await wait_for((world.state_dir / "ledger.sqlite3").exists, 30, "the ledger")
        os.close(read_end)  # whoever read the log is gone (tee killed by Ctrl-C)
        read_end = -1
        await asyncio.sleep(1)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
        assert code == 0
    finally:
        if read_end >= 0:
            os.close(read_end)
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_second_daemon_on_the_same_ledger_refuses_to_start(make_world, emulator):
    world = make_world()
    first = Daemon(load_settings(world.config))
    runner = asyncio.create_task(first.run())
    try:
        await wait_for(first.ready.is_set, 30, "the first daemon ready")
        code, output = await cli("run", "--config", str(world.config))
        assert code == 78, output
        assert "another isales-watcher already runs" in output
        assert f"pid {os.getpid()}" in output
    finally:
        first.request_stop()
        await asyncio.wait_for(runner, 30)
    # Once the first has stopped, the lock is free again.
    second = Daemon(load_settings(world.config))
    again = asyncio.create_task(second.run())
    await wait_for(second.ready.is_set, 30, "the second daemon ready")
    second.request_stop()
    await asyncio.wait_for(again, 30)


async def test_a_killed_validation_worker_is_replaced_and_the_file_checked_again(
    make_world, emulator, upload, run_daemon
):
    world = make_world()
    daemon = await run_daemon(world)
    pool = daemon.validation
    assert pool is not None
    data = xlsxwriter_bytes(rows_valid(60_000, seed=84))  # a second or two of checking
    await upload(world.inbox / "big.xlsx", data)
    await wait_for(lambda: bool(pool.pids), 60, "a validation worker at work")
    for pid in pool.pids:
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    await wait_for(world.settled("done", "big.xlsx.result.txt").exists, 90, "big in done/")
    assert pool.replaced >= 1
    # And the files after it are checked as usual.
    await upload(world.inbox / "after.xlsx", xlsxwriter_bytes(rows_valid(3, seed=85)))
    await wait_for(world.settled("done", "after.xlsx.result.txt").exists, 30, "after in done/")


async def test_a_250_byte_name_is_imported_and_its_receipts_fit(
    make_world, emulator, upload, run_daemon
):
    world = make_world()
    await run_daemon(world)
    name = "客户" * 40 + "x" * 5 + ".xlsx"  # 250 bytes in UTF-8
    assert len(name.encode()) == 250
    await upload(world.inbox / name, xlsxwriter_bytes(rows_valid(3, seed=86)))
    done = world.inbox / "done"
    await wait_for(lambda: any(done.glob("*.result.txt")), 40, "the receipt in done/")
    assert (done / name).exists()
    [text] = list(done.glob("*.result.txt"))
    assert len(text.name.encode()) <= 255
    assert "receipt's name is cut" in text.read_text()
    assert [u.file_name for u in emulator.uploads] == [name]


async def test_a_file_over_max_file_bytes_is_rejected_without_a_copy(
    make_world, emulator, upload, run_daemon, sshd, tmp_path
):
    world = make_world()
    world.config.write_text(world.config.read_text() + "\n[validation]\nmax_file_bytes = 3000\n")
    await run_daemon(world)
    await upload(world.inbox / "big.xlsx", xlsxwriter_bytes(rows_valid(5, seed=87)))
    receipt = world.settled("rejected", "big.xlsx.result.txt")
    await wait_for(receipt.exists, 30, "big rejected")
    assert "larger than 0 MB" not in receipt.read_text()
    assert "validation.max_file_bytes" in receipt.read_text()
    assert emulator.uploads == []
    # And a file that grows past the bound while it is copied is stopped during the copy.
    source = SftpSource(load_settings(world.config).sftp)
    (world.inbox / "grown.xlsx").write_bytes(b"x" * 10_000)
    try:
        with pytest.raises(WorkbookRejected, match="larger than"):
            await source.download(str(world.inbox / "grown.xlsx"), tmp_path / "copy", 4096)
    finally:
        await source.close()
