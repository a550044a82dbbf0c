"""The listing cache against a server whose folder mtime never moves."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from tests.conftest import rows, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.daemon import Daemon
from watcher.settings import load_settings
from watcher.sources.sftp import SftpSource


class StillFolders(SftpSource):
    """The real SFTP source on a server whose folders' mtime never changes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats = 0

    async def folder_mtime(self, folder: str) -> int:
        self.stats += 1
        return 1_000_000_000


async def test_a_slow_upload_where_folder_mtimes_never_move(make_world, emulator, upload):
    world = make_world(settle_s=0.5, daemon_extra="full_listing_every = 12")
    settings = load_settings(world.config)
    source = StillFolders(settings.sftp)
    daemon = Daemon(settings, source=source)
    runner = asyncio.create_task(daemon.run())
    data = xlsxwriter_bytes(rows_valid(3000, seed=15))
    try:
        await wait_for(daemon.ready.is_set, 30, "the daemon ready")
        await wait_for(
            lambda: daemon._intake.listings.reused > 12, 30, "the empty inbox's listing re-used"
        )

        def still_in_the_inbox() -> None:
            assert (world.inbox / "slow.xlsx").exists(), "claimed while still uploading"
            assert rows(world) == []

        await upload(
            world.inbox / "slow.xlsx", data, pieces=5, pause_s=1.5, between=still_in_the_inbox
        )
        await wait_for(lambda: [r.state.value for r in rows(world)] == ["done"], 30, "imported")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(runner, 30)
    [call] = emulator.uploads
    assert call.fetched_sha256 == hashlib.sha256(data).hexdigest()
    [row] = rows(world)
    assert (row.size_bytes, row.sha256) == (len(data), call.fetched_sha256)
    print(f"listed {daemon._intake.listings.listed}, re-used {daemon._intake.listings.reused}")
