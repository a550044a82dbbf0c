"""Settle without a stat first: a file gone from processing/ must not take an earlier file's
name, nor have its receipts written over that file's."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.conftest import rows, settled_as, wait_for
from watcher.daemon import Daemon
from watcher.settings import load_settings
from watcher.sources import Source, make_source


class VanishBeforeSettle:
    """The configured source; the second file settled into rejected/ is removed from
    processing/ just before (by a person, by a clean-up job)."""

    def __init__(self, source: Source, local_inbox: Path) -> None:
        self._source = source
        self._local_inbox = local_inbox
        self._settles = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    async def rename(self, source: str, target: str) -> None:
        if "/processing/" in source and "/rejected/" in target:
            self._settles += 1
            if self._settles == 2:
                (self._local_inbox / "processing" / source.split("/processing/", 1)[1]).unlink()
        await self._source.rename(source, target)


@pytest.mark.parametrize("kind", ["sftp", "local"])
async def test_a_file_gone_before_its_settle_leaves_an_earlier_file_s_receipts_alone(
    make_world, emulator, upload, sshd, kind
):
    local = f'source = "local"\n[local]\nbase_dir = "{sshd.root}"\n' if kind == "local" else ""
    world = make_world(daemon_extra=local)
    settings = load_settings(world.config)
    source: Any = VanishBeforeSettle(make_source(settings), world.inbox)
    daemon = Daemon(settings, source=source)
    runner = asyncio.create_task(daemon.run())
    receipt = world.settled("rejected", "same.xlsx.result.json")
    try:
        await wait_for(daemon.ready.is_set, 30, "the daemon ready")
        await upload(world.inbox / "same.xlsx", b"first: not a workbook")
        await wait_for(settled_as(world, "same.xlsx", "rejected"), 30, "the first rejected")
        [first] = rows(world)
        await upload(world.inbox / "same.xlsx", b"second: not a workbook either")
        both = ["rejected", "rejected"]
        await wait_for(lambda: [r.state.value for r in rows(world)] == both, 30, "both settled")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(runner, 30)
    second = next(r for r in rows(world) if r.id != first.id)
    assert world.settled("rejected", "same.xlsx").read_bytes() == b"first: not a workbook"
    assert json.loads(receipt.read_text())["ledger_id"] == first.id  # still the first file's
    assert second.settled_path == f"{world.remote_inbox}/rejected/same.{second.id}.xlsx"
    beside = json.loads(world.settled("rejected", f"same.{second.id}.xlsx.result.json").read_text())
    assert beside["ledger_id"] == second.id


async def test_a_settled_folder_deleted_while_running_is_made_again(
    make_world, run_daemon, emulator, upload
):
    world = make_world()
    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        await upload(world.inbox / "a.xlsx", b"not a workbook")
        await wait_for(settled_as(world, "a.xlsx", "rejected"), 30, "a rejected")
        shutil.rmtree(world.inbox / "rejected")  # an operator's clean-up
        shutil.rmtree(world.inbox / "processing")
        await upload(world.inbox / "b.xlsx", b"not a workbook either")
        await wait_for(settled_as(world, "b.xlsx", "rejected"), 30, "b rejected")
    assert world.settled("rejected", "b.xlsx").read_bytes() == b"not a workbook either"
    assert world.settled("rejected", "b.xlsx.result.txt").exists()
    print([(e["event"], e.get("error")) for e in logs if e["log_level"] != "info"])
