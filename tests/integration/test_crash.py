"""SIGKILL and SIGTERM against the real daemon process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import sys
from pathlib import Path

from tests.conftest import wait_for
from tests.faultproxy import FaultProxy
from tests.workbooks import rows_valid, xlsxwriter_bytes


def _states(state_dir: Path) -> list[str]:
    ledger = state_dir / "ledger.sqlite3"
    if not ledger.exists():
        return []
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
            return [row[0] for row in db.execute("SELECT state FROM files ORDER BY id")]
    except sqlite3.OperationalError:  # the daemon is still creating the schema
        return []


async def _start(config: Path) -> asyncio.subprocess.Process:
    # Logs go to a file beside the config: a pipe nobody reads would fill and block the daemon.
    log = config.with_suffix(".log").open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watcher",
            "run",
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    finally:
        log.close()


async def _kill_when(world, state: str) -> None:
    """Start the daemon, SIGKILL it as soon as the ledger shows ``state``."""
    daemon = await _start(world.config)
    try:
        await wait_for(lambda: _states(world.state_dir) == [state], 60, state)
    finally:
        daemon.kill()
        await daemon.wait()


async def _run_until_settled(world, name: str) -> None:
    """Start the daemon again, wait for ``name`` in done/, stop it with SIGTERM (exit 0)."""
    daemon = await _start(world.config)
    try:
        await wait_for(world.settled("done", f"{name}.result.txt").exists, 60, f"{name} in done/")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0


async def test_sigkill_right_after_the_claim_then_restart_imports_exactly_once(
    make_world, emulator, upload, sshd, tmp_path
):
    # The daemon reaches the server through a slow proxy, so that the download that follows the
    # claim takes seconds: the kill lands after the claim and before anything reaches iSales.
    proxy = await FaultProxy(sshd.host, sshd.port).start()
    known_hosts = tmp_path / "proxy_known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {sshd.host_pub}\n")
    world = make_world(sftp_port=proxy.port, known_hosts=known_hosts, server_id="fs-1")
    data = xlsxwriter_bytes(rows_valid(20000, seed=9))
    assert len(data) > 300_000
    await upload(world.inbox / "big.xlsx", data)

    daemon = await _start(world.config)
    try:
        await wait_for(lambda: "claimed" in _states(world.state_dir), 60, "the claim")
        proxy.delay_s = 0.5
        daemon.kill()
        await daemon.wait()
    finally:
        proxy.delay_s = 0.0
    assert emulator.uploads == [], "the kill came too late to test the claim"
    assert _states(world.state_dir) == ["claimed"]
    assert not (world.inbox / "big.xlsx").exists()

    daemon = await _start(world.config)
    try:
        await wait_for(world.settled("done", "big.xlsx.result.txt").exists, 60, "big.xlsx in done/")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0
        await proxy.stop()
    [call] = emulator.uploads
    assert call.fetched_sha256 == hashlib.sha256(data).hexdigest()
    assert _states(world.state_dir) == ["done"]


async def test_sigterm_drains_and_exits_0(make_world, emulator, upload):
    world = make_world()
    daemon = await _start(world.config)
    await upload(world.inbox / "a.xlsx", xlsxwriter_bytes(rows_valid(4, seed=11)))
    await wait_for(world.settled("done", "a.xlsx.result.txt").exists, 60, "a.xlsx in done/")
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.wait(), 30) == 0
    stderr = world.config.with_suffix(".log").read_text()
    assert "daemon.stopped" in stderr
    assert os.environ.get("ISALES_WATCHER_ISALES__SECRET_KEY") is None
    assert "test-sk" not in stderr


async def test_a_restart_while_tracking_finishes_the_tracking_without_a_second_import(
    make_world, emulator, upload
):
    from watcher.isales.faults import Fault, FaultKind

    world = make_world()
    emulator.faults.script("upload", Fault(FaultKind.slow_import, delay_s=4))
    await upload(world.inbox / "tracked.xlsx", xlsxwriter_bytes(rows_valid(5, seed=71)))
    await _kill_when(world, "tracking")
    assert len(emulator.uploads) == 1
    await _run_until_settled(world, "tracked.xlsx")
    assert len(emulator.uploads) == 1
    assert "5 imported" in world.settled("done", "tracked.xlsx.result.txt").read_text()
    assert _states(world.state_dir) == ["done"]


async def test_a_crash_between_the_post_and_the_ledger_write_is_reconciled(
    make_world, emulator, upload
):
    from watcher.isales.faults import Fault, FaultKind

    # The import is accepted but its answer takes 5 s; the daemon dies meanwhile, in submitting,
    # once the POST has reached iSales (killed earlier, it would rightly be parked instead).
    world = make_world()
    emulator.faults.script("upload", Fault(FaultKind.delay, delay_s=5))
    arrived: list[str] = []
    plan = emulator.faults.next_fault

    def noting(endpoint: str) -> Fault | None:
        arrived.append(endpoint)
        return plan(endpoint)

    emulator.faults.next_fault = noting  # type: ignore[method-assign]
    await upload(world.inbox / "inflight.xlsx", xlsxwriter_bytes(rows_valid(5, seed=72)))
    daemon = await _start(world.config)
    try:
        await wait_for(lambda: "upload" in arrived, 60, "the POST at iSales")
        assert _states(world.state_dir) == ["submitting"]
    finally:
        daemon.kill()
        await daemon.wait()
    await _run_until_settled(world, "inflight.xlsx")
    assert len(emulator.uploads) == 1
    calls = [c for c in emulator.calls if "uploadFileServer" in c.path]
    assert len(calls) == 1  # reconciled, never sent again
