"""Sidecar mode stays inside its folders: no link is followed, no refused move is half done."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.conftest import route_refusal, settled_as, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.claim import claim
from watcher.errors import SourceRefusedError
from watcher.ledger import Ledger
from watcher.models import FileState, RemoteEntry
from watcher.settings import LocalSettings, RouteSettings
from watcher.sources import check_access
from watcher.sources.local import LocalSource

DAEMON = 'source = "local"\nretry_backoff_s = 0.2\nmax_backoff_s = 1\n'


def local_world(make_world, sshd):
    return make_world(daemon_extra=DAEMON + f'\n[local]\nbase_dir = "{sshd.root}"\n')


def _rows(world) -> list[tuple[str, FileState, str | None]]:
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    try:
        return [(r.name, r.state, r.reason) for r in reversed(ledger.rows())]
    finally:
        ledger.close()


async def test_a_done_folder_turned_into_a_link_is_never_written_through(
    make_world, run_daemon, emulator, sshd, tmp_path
):
    world = local_world(make_world, sshd)
    await run_daemon(world)
    await wait_for((world.inbox / "done").is_dir, 30, "the daemon's folders made")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (world.inbox / "done").rmdir()
    (world.inbox / "done").symlink_to(elsewhere)
    with structlog.testing.capture_logs() as logs:
        (world.inbox / "list.xlsx").write_bytes(xlsxwriter_bytes(rows_valid(3, seed=301)))
        await wait_for(lambda: len(emulator.uploads) == 1, 30, "the import")
        await wait_for(
            lambda: any("done" in str(e.get("error", "")) for e in logs), 30, "the refusal"
        )
        await asyncio.sleep(1)  # more attempts: none may go through the link
    assert list(elsewhere.iterdir()) == []
    refusal = next(e for e in logs if e["event"] == "file.step_failed")
    assert "symbolic link" in refusal["error"]
    assert "'done'" in refusal["error"]
    assert [r[1] for r in _rows(world)] == [FileState.settling]  # imported; only the move waits
    # The operator puts a real folder back: the file lands there by itself.
    (world.inbox / "done").unlink()
    await wait_for(settled_as(world, "list.xlsx", "done"), 30, "list.xlsx done")
    assert (world.inbox / "done" / "list.xlsx.result.txt").exists()
    assert list(elsewhere.iterdir()) == []


async def test_a_linked_daemon_folder_at_start_refuses_the_inbox_and_names_it(
    make_world, run_daemon, emulator, sshd, tmp_path
):
    world = local_world(make_world, sshd)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (world.inbox / "processing").symlink_to(elsewhere)
    (world.inbox / "list.xlsx").write_bytes(xlsxwriter_bytes(rows_valid(3, seed=302)))
    assert "'processing' is a symbolic link" in await route_refusal(run_daemon, world)
    assert list(elsewhere.iterdir()) == []
    assert _rows(world) == []
    assert (world.inbox / "list.xlsx").exists()
    assert emulator.uploads == []


async def test_a_linked_file_in_the_inbox_is_ignored_with_one_warning(
    make_world, run_daemon, emulator, sshd, tmp_path
):
    world = local_world(make_world, sshd)
    outside = tmp_path / "someone-elses.xlsx"
    outside.write_bytes(xlsxwriter_bytes(rows_valid(3, seed=303)))
    (world.inbox / "link.xlsx").symlink_to(outside)
    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        (world.inbox / "real.xlsx").write_bytes(xlsxwriter_bytes(rows_valid(3, seed=304)))
        await wait_for(settled_as(world, "real.xlsx", "done"), 30, "real.xlsx done")
        await asyncio.sleep(1)  # more polls: still one warning
    warned = [e for e in logs if e["event"] == "local.symlink_ignored"]
    assert [e["path"] for e in warned] == [f"{world.inbox}/link.xlsx"]
    assert [r[0] for r in _rows(world)] == ["real.xlsx"]
    assert [u.file_name for u in emulator.uploads] == ["real.xlsx"]
    assert (world.inbox / "link.xlsx").is_symlink()
    assert outside.exists()


def _as_nobody(base: Path, ledger_path: Path, answer: multiprocessing.connection.Connection):
    """In a forked child, as an unprivileged user: try to claim from a sticky inbox."""
    nobody = pwd.getpwnam("nobody")
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
    asyncio.events._set_running_loop(None)  # the parent's loop is not this process's

    async def attempt() -> list[str]:
        said = []
        source = LocalSource(LocalSettings(base_dir=base), "/srv", 5)
        route = RouteSettings(name="r", inbox="/srv/sticky", campaign_id="c")
        # The access check passes: the daemon's own probe file is its own to move.
        await check_access(source, route.inbox_path)
        said.append("access ok")
        ledger = Ledger(ledger_path)
        info = (base / "sticky" / "theirs.xlsx").stat()
        entry = RemoteEntry("theirs.xlsx", info.st_size, info.st_mtime_ns)
        try:
            await claim(source, ledger, route, entry)
            said.append("claimed")
        except SourceRefusedError as exc:
            said.append(f"refused: {exc}")
        ledger.close()
        return said

    answer.send(asyncio.run(attempt()))


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder an unprivileged user can reach (pytest's own is private to root)."""
    made = Path(tempfile.mkdtemp(prefix="isales-watcher-sticky-"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        shutil.rmtree(made)


async def test_a_sticky_inbox_refuses_the_claim_whole_and_leaves_no_link(open_folder):
    tmp_path = open_folder
    base = tmp_path / "base"
    sticky = base / "sticky"
    sticky.mkdir(parents=True)
    base.chmod(0o755)
    sticky.chmod(0o1777)  # like /tmp: anyone may add, only the owner may remove
    theirs = sticky / "theirs.xlsx"
    theirs.write_bytes(b"an uploader's file")
    theirs.chmod(0o666)  # readable and writable: fs.protected_hardlinks allows the link
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    ledger_path = state / "ledger.sqlite3"
    Ledger(ledger_path).close()
    for made in state.iterdir():
        made.chmod(0o666)

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_as_nobody, args=(base, ledger_path, send))
    child.start()
    send.close()  # the child's end: EOF here if the child dies without an answer
    said = await asyncio.to_thread(receive.recv)
    child.join(10)
    assert said[0] == "access ok"
    assert said[1].startswith("refused: ")
    assert "may not remove" in said[1]
    assert "sticky" in said[1]
    assert theirs.read_bytes() == b"an uploader's file"  # where it was, whole
    leftovers = [p for p in (sticky / "processing").rglob("*") if not p.is_dir()]
    assert leftovers == []  # no second name of the file in processing/
    ledger = Ledger(ledger_path)
    try:
        [row] = ledger.rows()
    finally:
        ledger.close()
    assert row.state is FileState.lost  # not left in claiming
    assert "the claim was refused" in (row.reason or "")


@pytest.mark.parametrize("mode", ["sftp", "local"])
async def test_a_name_that_is_not_utf8_is_left_alone_with_one_warning(
    make_world, run_daemon, emulator, sshd, mode
):
    world = local_world(make_world, sshd) if mode == "local" else make_world()
    odd = os.fsencode(world.inbox) + b"/list-\xff\xfe.xlsx"
    with open(odd, "wb") as out:
        out.write(xlsxwriter_bytes(rows_valid(3, seed=305)))
    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        (world.inbox / "fine.xlsx").write_bytes(xlsxwriter_bytes(rows_valid(3, seed=306)))
        await wait_for(settled_as(world, "fine.xlsx", "done"), 30, "fine.xlsx done")
        await asyncio.sleep(1)  # more polls: still one warning
    warned = [e for e in logs if e["event"] == "source.name_not_utf8"]
    assert len(warned) == 1
    assert "\\xff\\xfe" in warned[0]["name"]
    assert [r[0] for r in _rows(world)] == ["fine.xlsx"]
    assert os.listdir(world.inbox).count(os.fsdecode(odd).rsplit("/", 1)[1]) == 1  # left there
    assert not any(e["event"] in ("file.task_crashed", "route.scan_crashed") for e in logs)


async def test_a_campaign_folder_named_in_gbk_stops_nothing(make_world, run_daemon, emulator):
    world = make_world()
    text = world.config.read_text().replace(
        f'inbox = "{world.inbox}"\ncampaign_id = "{world.campaign}"',
        f'inbox = "{world.inbox}/{{campaign_id}}"',
    )
    world.config.write_text(text)
    os.mkdir(os.fsencode(world.inbox) + b"/" + "春季".encode("gbk"))  # an old client's name
    (world.inbox / "1647").mkdir()
    emulator.campaigns.add("1647")
    with structlog.testing.capture_logs() as logs:
        daemon = await run_daemon(world)
        (world.inbox / "1647" / "list.xlsx").write_bytes(xlsxwriter_bytes(rows_valid(3, seed=307)))
        await wait_for((world.inbox / "1647" / "done" / "list.xlsx.result.txt").exists, 30, "done")
    assert daemon.failed is None
    assert [e["event"] for e in logs if e["event"] == "source.name_not_utf8"] == [
        "source.name_not_utf8"
    ]
    assert [u.campaign_id for u in emulator.uploads] == ["1647"]


async def test_a_claimed_file_is_the_daemons_own_copy_that_its_uploader_cannot_change(tmp_path):
    nobody = pwd.getpwnam("nobody")
    inbox = tmp_path / "base" / "in"
    inbox.mkdir(parents=True)
    dropped = inbox / "list.xlsx"
    dropped.write_bytes(b"the rows that were checked")
    os.chown(dropped, nobody.pw_uid, nobody.pw_gid)
    dropped.chmod(0o666)
    source = LocalSource(LocalSettings(base_dir=tmp_path / "base"), "/srv", 5)
    with dropped.open("r+b") as uploaders_handle:  # opened before the claim, kept after it
        await source.makedirs("/srv/in/processing/1")
        await source.rename("/srv/in/list.xlsx", "/srv/in/processing/1/list.xlsx")
        uploaders_handle.write(b"forty rows nobody checked")
        uploaders_handle.flush()
    claimed = inbox / "processing" / "1" / "list.xlsx"
    assert claimed.read_bytes() == b"the rows that were checked"
    assert claimed.stat().st_uid == os.geteuid()
    assert not dropped.exists()
    assert [p.name for p in claimed.parent.iterdir()] == ["list.xlsx"]  # no copy left over


async def test_a_daemon_folder_made_by_someone_else_is_refused_by_name(tmp_path):
    nobody = pwd.getpwnam("nobody")
    inbox = tmp_path / "base" / "in"
    (inbox / "processing").mkdir(parents=True)
    os.chown(inbox / "processing", nobody.pw_uid, nobody.pw_gid)
    source = LocalSource(LocalSettings(base_dir=tmp_path / "base"), "/srv", 5)
    with pytest.raises(SourceRefusedError, match=r"processing is owned by uid \d+, not by the"):
        await check_access(source, "/srv/in")
    assert sorted(p.name for p in inbox.iterdir()) == ["processing"]  # no probe left
