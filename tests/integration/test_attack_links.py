"""A file swapped for a link or a folder between its listing and its claim (SFTP).

The claim is a plain rename, which moves a name as it is: what was swapped in is claimed.
It must be answered in rejected/, never read, never sent, never retried for ever.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import route_refusal, settled_as, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.daemon import Daemon
from watcher.settings import load_settings
from watcher.sources.sftp import SftpSource


class SwappingSource(SftpSource):
    """The real SFTP source; just before a claim's rename, the uploader swaps the file."""

    def __init__(self, *args: Any, inbox: Path, swap: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbox = inbox
        self.swap = swap  # name -> "link" or "folder", once

    async def rename(self, source: str, target: str) -> None:
        name = posixpath.basename(source)
        kind = self.swap.pop(name, None) if "/processing/" in target else None
        if kind is not None:
            path = self.inbox / name
            path.unlink()
            if kind == "link":
                path.symlink_to(self.inbox.parent / f"outside-{self.inbox.name}.xlsx")
            else:
                path.mkdir()
        await super().rename(source, target)


@pytest.mark.parametrize(("kind", "said"), [("link", "a symbolic link"), ("folder", "a folder")])
async def test_a_file_swapped_before_its_claim_is_rejected_unread_not_retried(
    make_world, emulator, upload, kind, said
):
    world = make_world()
    outside = world.inbox.parent / f"outside-{world.inbox.name}.xlsx"
    outside.write_bytes(xlsxwriter_bytes(rows_valid(3, seed=91)))
    settings = load_settings(world.config)
    source = SwappingSource(settings.sftp, inbox=world.inbox, swap={"swapped.xlsx": kind})
    daemon = Daemon(settings, source=source)
    runner = asyncio.create_task(daemon.run())
    try:
        await wait_for(daemon.ready.is_set, 30, "the daemon ready")
        await upload(world.inbox / "swapped.xlsx", xlsxwriter_bytes(rows_valid(3, seed=92)))
        await wait_for(settled_as(world, "swapped.xlsx", "rejected"), 30, "the swap rejected")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(runner, 30)
    assert emulator.uploads == []
    moved = world.settled("rejected", "swapped.xlsx")
    assert moved.is_symlink() if kind == "link" else moved.is_dir()
    receipt = json.loads(world.settled("rejected", "swapped.xlsx.result.json").read_text())
    assert receipt["reason"].startswith(f"the file is {said}, which this service never opens")
    assert receipt["sha256"] is None  # never read
    assert list((world.inbox / "processing").iterdir()) == []


@pytest.mark.parametrize("folder", ["rejected", ".isales-watcher"])
async def test_a_daemon_folder_that_is_a_link_is_refused_not_written_through(
    folder, make_world, run_daemon, emulator, upload, tmp_path
):
    """An uploader who swaps rejected/ (or the lease's folder) for a link to elsewhere: the
    daemon writes nothing there; the inbox is refused and says why."""
    world = make_world()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (world.inbox / folder).symlink_to(elsewhere)
    await upload(world.inbox / "x.xlsx", b"not a workbook at all")
    assert "is a symbolic link" in await route_refusal(run_daemon, world)
    assert list(elsewhere.iterdir()) == []
    assert (world.inbox / "x.xlsx").exists()  # nothing claimed from a refused inbox
    assert emulator.uploads == []
