"""One daemon per inbox: a lease in the inbox keeps a second daemon (own ledger) out of it."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog

from tests.conftest import settled_as, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.daemon import Daemon
from watcher.ledger import Ledger
from watcher.models import FileState
from watcher.settings import Settings, load_settings
from watcher.sources.lease import LEASE_NAME

# Fast, but stale only after 3 s: a loaded machine (the suite beside two CPU hogs) must not
# make a live holder look dead.
FAST_LEASE = "lease_interval_s = 0.5\nlease_stale_after = 6\n"


def _with_state(world, name: str) -> Settings:
    """The world's configuration, with a ledger of its own: another host's daemon."""
    settings = load_settings(world.config)
    state = world.state_dir.parent / name
    return settings.model_copy(
        update={"daemon": settings.daemon.model_copy(update={"state_dir": state})}
    )


@pytest.fixture
async def daemons() -> AsyncIterator[Callable[[Settings], Daemon]]:
    running: list[tuple[Daemon, asyncio.Task[None]]] = []

    def start(settings: Settings) -> Daemon:
        daemon = Daemon(settings)
        running.append((daemon, asyncio.create_task(daemon.run())))
        return daemon

    yield start
    for daemon, task in running:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)


def _holder(world) -> str | None:
    try:
        return json.loads((world.inbox / LEASE_NAME).read_text())["instance"]
    except FileNotFoundError:
        return None


def _names(state_dir: Path) -> list[str]:
    ledger = Ledger(state_dir / "ledger.sqlite3")
    try:
        return sorted(r.name for r in ledger.rows() if r.state is FileState.done)
    finally:
        ledger.close()


async def test_a_second_daemon_with_its_own_ledger_leaves_a_held_inbox_alone(
    make_world, emulator, upload, daemons
):
    world = make_world(daemon_extra=FAST_LEASE)
    first = daemons(load_settings(world.config))
    await wait_for(first.ready.is_set, 30, "the first daemon ready")
    await wait_for((world.inbox / LEASE_NAME).exists, 30, "the first daemon's lease")
    with structlog.testing.capture_logs() as logs:
        second_settings = _with_state(world, "second")
        second = daemons(second_settings)
        await wait_for(second.ready.is_set, 30, "the second daemon ready")
        for n in range(4):
            data = xlsxwriter_bytes(rows_valid(3, seed=400 + n))
            await upload(world.inbox / f"list-{n}.xlsx", data)
        for n in range(4):
            await wait_for(settled_as(world, f"list-{n}.xlsx", "done"), 45, f"list-{n} done")
        await asyncio.sleep(1)  # several more passes of the second daemon
    refused = [e for e in logs if e["event"] == "route.scan_failed"]
    assert len(refused) == 1  # said once
    assert "worked by another isales-watcher" in refused[0]["error"]
    assert f"pid {os.getpid()}" in refused[0]["error"]
    assert _names(second_settings.daemon.state_dir) == []
    assert sorted(u.file_name for u in emulator.uploads) == [f"list-{n}.xlsx" for n in range(4)]

    # The first stops cleanly and frees the inbox: the second takes it, not over a stale lease.
    with structlog.testing.capture_logs() as logs:
        first.request_stop()
        second_instance = second._leases.me["instance"]
        await wait_for(lambda: _holder(world) == second_instance, 30, "the second daemon's lease")
    assert [e["event"] for e in logs if e["event"].startswith("route.lease")] == [
        "route.lease_taken"
    ]
    await upload(world.inbox / "after.xlsx", xlsxwriter_bytes(rows_valid(3, seed=410)))
    await wait_for(lambda: _names(second_settings.daemon.state_dir) == ["after.xlsx"], 45, "after")


async def test_a_lease_whose_heartbeat_stopped_is_taken_over_and_said(
    make_world, emulator, upload, daemons
):
    world = make_world(daemon_extra=FAST_LEASE)
    # A daemon on another host died holding the inbox: its heartbeat never moves again.
    dead = {"host": "elsewhere", "pid": 4242, "instance": "0dead0", "beat": 17, "interval_s": 0.5}
    (world.inbox / LEASE_NAME).parent.mkdir()
    (world.inbox / LEASE_NAME).write_text(json.dumps(dead))
    await upload(world.inbox / "waiting.xlsx", xlsxwriter_bytes(rows_valid(3, seed=411)))
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        daemon = daemons(load_settings(world.config))
        await wait_for(settled_as(world, "waiting.xlsx", "done"), 45, "waiting.xlsx done")
    waited_s = time.monotonic() - started
    [taken] = [e for e in logs if e["event"] == "route.lease_taken_over"]
    assert "host elsewhere, pid 4242" in taken["previous"]
    assert "no heartbeat" in taken["why"]
    assert waited_s >= 3  # six intervals of 0.5 s: not before the lease was stale
    lease = json.loads((world.inbox / LEASE_NAME).read_text())
    assert lease["instance"] == daemon._leases.me["instance"]
    assert lease["beat"] > 17


async def test_in_flight_work_is_bounded_and_the_rest_waits_unclaimed_oldest_first(
    make_world, emulator, upload, run_daemon
):
    emulator.import_delay_s = 1.0  # imports take a while: files stay in flight
    world = make_world(daemon_extra="max_in_flight = 2\n")
    names = [f"f{n}.xlsx" for n in range(5)]
    for n, name in enumerate(names):
        path = world.inbox / name
        path.write_bytes(xlsxwriter_bytes(rows_valid(20_000, seed=420 + n)))  # ~0.5 s checks
        os.utime(path, (1_700_000_000 + n, 1_700_000_000 + n))  # f0 is the oldest
    most = 0
    order: list[str] = []
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while not done.is_set():
            ledger = Ledger(world.state_dir / "ledger.sqlite3")
            try:
                most = max(most, sum(ledger.in_hand().values()))
                order[:] = [r.name for r in reversed(ledger.rows())]
            finally:
                ledger.close()
            await asyncio.sleep(0.05)

    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        watcher = asyncio.create_task(watch())
        for name in names:
            await wait_for(settled_as(world, name, "done"), 60, f"{name} done")
        done.set()
        await watcher
    assert most <= 2
    assert order == names  # claimed oldest first, each once
    assert any(e["event"] == "daemon.in_flight_full" for e in logs)


@pytest.mark.parametrize(
    "planted",
    [
        '{"host": "x", "pid": 1, "beat": "oops"}',  # not what a daemon writes
        "not json at all",
        '{"host": "x", "pid": 1, "instance": "i", "beat": true}',
    ],
)
async def test_a_planted_lease_is_unreadable_and_taken_over_once_stale(
    make_world, emulator, upload, daemons, planted
):
    world = make_world(daemon_extra=FAST_LEASE)
    (world.inbox / LEASE_NAME).parent.mkdir()
    (world.inbox / LEASE_NAME).write_text(planted)
    await upload(world.inbox / "list.xlsx", xlsxwriter_bytes(rows_valid(3, seed=430)))
    with structlog.testing.capture_logs() as logs:
        daemons(load_settings(world.config))
        await wait_for(settled_as(world, "list.xlsx", "done"), 45, "list.xlsx done")
    [taken] = [e for e in logs if e["event"] == "route.lease_taken_over"]
    assert taken["previous"] == "an unreadable lease"
    assert not any(e["event"] == "route.scan_crashed" for e in logs)
