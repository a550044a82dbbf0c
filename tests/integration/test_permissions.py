"""Permissions, as a non-root SFTP user in a chroot meets them (OpenSSH, ``chroot_sshd``).

An inbox the daemon may not empty is refused with one error that names the folder and the
permission, at ``check`` and at start, before any file is touched; a file it may move but not
read is rejected with a receipt that says so; a link is never followed.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import stat

import structlog

from tests.conftest import World, cli, rows, settled_as, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes

DAEMON = "retry_backoff_s = 0.2\nmax_backoff_s = 1"
# A refused inbox is tried again every 30 s (watcher.intake._ACCESS_RECHECK_S), then at once.
RECHECK_WAIT_S = 45


def give_to(path: os.PathLike[str], owner: str) -> None:
    """Make ``owner`` (a user name) the owner of ``path``."""
    account = pwd.getpwnam(owner)
    os.chown(path, account.pw_uid, account.pw_gid)


async def refused_once(world: World, logs: list[dict[str, object]]) -> str:
    """The daemon's one ``route.scan_failed`` for the inbox, said once over several polls."""
    await wait_for(lambda: any(e["event"] == "route.scan_failed" for e in logs), 30, "the refusal")
    await asyncio.sleep(2)  # several more polls (0.3 s each): said once, not every poll
    [refusal] = [e for e in logs if e["event"] == "route.scan_failed"]
    assert refusal["inbox"] == world.remote_inbox
    return str(refusal["error"])


async def check_fails(world: World) -> str:
    """``isales-watcher check`` on the world: it fails on the route; its one FAIL line."""
    code, output = await cli("check", "--config", str(world.config))
    assert code == 1, output
    assert "ok    SFTP login to" in output  # the login works: the folder is the trouble
    [line] = [line for line in output.splitlines() if line.startswith("FAIL")]
    return line


async def test_a_read_only_inbox_is_refused_at_check_and_start_then_taken_once_writable(
    make_world, run_daemon, emulator, chroot_sshd
):
    world = make_world(server="chroot_sshd")
    give_to(world.inbox, "root")  # mode 755: the SFTP user may list and read, not write
    world.inbox.chmod(0o755)
    waiting = world.inbox / "waiting.xlsx"
    waiting.write_bytes(xlsxwriter_bytes(rows_valid(3, seed=81)))
    before = waiting.stat()

    line = await check_fails(world)
    said = f"cannot write in {world.remote_inbox}: it needs write permission on that folder"
    assert said in line

    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        error = await refused_once(world, logs)
        assert said in error
        assert sorted(os.listdir(world.inbox)) == ["waiting.xlsx"]  # untouched, nothing made
        assert waiting.stat().st_mtime_ns == before.st_mtime_ns
        assert rows(world) == []  # nothing half-claimed: no claim was even begun
        assert emulator.uploads == []

        give_to(world.inbox, chroot_sshd.username)
        await wait_for(
            settled_as(world, "waiting.xlsx", "done"), RECHECK_WAIT_S, "the file taken by itself"
        )
    assert [u.file_name for u in emulator.uploads] == ["waiting.xlsx"]
    assert world.settled("done", "waiting.xlsx").exists()
    print(f"check: {line}\nstart: {error}")


async def test_a_processing_folder_the_user_cannot_write_in_is_refused_by_name(
    make_world, run_daemon, emulator, chroot_sshd
):
    world = make_world(server="chroot_sshd")
    processing = world.inbox / "processing"
    processing.mkdir(mode=0o755)  # root's: no processing/<id>/ can be made in it
    waiting = world.inbox / "waiting.xlsx"
    waiting.write_bytes(xlsxwriter_bytes(rows_valid(3, seed=82)))

    line = await check_fails(world)
    said = (
        f"cannot move files into {world.remote_inbox}/processing: it needs write permission on "
        "that folder to claim dropped files"
    )
    assert said in line

    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        error = await refused_once(world, logs)
        assert said in error
        # Neither the dropped file nor the daemon's own probe is left half-way.
        assert sorted(os.listdir(world.inbox)) == ["done", "processing", "rejected", "waiting.xlsx"]
        assert os.listdir(processing) == []
        assert rows(world) == []
        assert emulator.uploads == []

        give_to(processing, chroot_sshd.username)
        await wait_for(
            settled_as(world, "waiting.xlsx", "done"), RECHECK_WAIT_S, "the file taken by itself"
        )
    assert [u.file_name for u in emulator.uploads] == ["waiting.xlsx"]
    print(f"check: {line}\nstart: {error}")


async def test_a_done_folder_the_user_cannot_write_in_is_refused_before_any_claim(
    make_world, run_daemon, emulator
):
    # Else every file would be claimed, imported, and then stuck in processing/ for good.
    world = make_world(server="chroot_sshd")
    (world.inbox / "done").mkdir(mode=0o755)  # root's
    waiting = world.inbox / "waiting.xlsx"
    waiting.write_bytes(xlsxwriter_bytes(rows_valid(3, seed=87)))

    line = await check_fails(world)
    said = (
        f"cannot move files into {world.remote_inbox}/done: it needs write permission on that "
        "folder to settle imported files there"
    )
    assert said in line

    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        assert said in await refused_once(world, logs)
    assert sorted(os.listdir(world.inbox)) == ["done", "processing", "rejected", "waiting.xlsx"]
    assert [os.listdir(world.inbox / f) for f in ("processing", "done")] == [[], []]
    assert rows(world) == []
    assert emulator.uploads == []
    print(f"check: {line}")


async def test_a_file_the_user_cannot_read_is_rejected_with_a_receipt_that_says_why(
    make_world, run_daemon, emulator
):
    world = make_world(server="chroot_sshd", daemon_extra=DAEMON)
    secret = world.inbox / "secret.xlsx"
    secret.write_bytes(xlsxwriter_bytes(rows_valid(3, seed=83)))
    secret.chmod(0o600)  # root's: the user may move it (a folder's right), not read it
    (world.inbox / "open.xlsx").write_bytes(xlsxwriter_bytes(rows_valid(3, seed=84)))

    await run_daemon(world)
    await wait_for(settled_as(world, "open.xlsx", "done"), 45, "the readable file imported")
    # Five refused reads, 0.2 s to 1 s apart.
    await wait_for(settled_as(world, "secret.xlsx", "rejected"), 20, "the unreadable one rejected")

    rejected = world.settled("rejected", "secret.xlsx")
    assert stat.S_IMODE(rejected.stat().st_mode) == 0o600  # moved as it was, never rewritten
    [row] = [r for r in rows(world) if r.name == "secret.xlsx"]
    assert "could not be read" in (row.reason or "")
    receipt = world.settled("rejected", "secret.xlsx.result.txt").read_text()
    assert "could not be read" in receipt
    assert "check its permissions" in receipt
    assert "Permission denied" in receipt
    assert [u.file_name for u in emulator.uploads] == ["open.xlsx"]
    assert os.listdir(world.inbox / "processing") == []
    print(f"receipt:\n{receipt}")


async def test_a_link_in_the_inbox_is_never_claimed_nor_followed(
    make_world, run_daemon, emulator, chroot_sshd
):
    world = make_world(server="chroot_sshd")
    elsewhere = chroot_sshd.root / "elsewhere" / world.inbox.name
    elsewhere.mkdir(parents=True)
    target = elsewhere / "real.xlsx"
    content = xlsxwriter_bytes(rows_valid(3, seed=85))
    target.write_bytes(content)
    link = world.inbox / "link.xlsx"
    # Relative, so that it points at the same file inside the chroot as outside.
    link.symlink_to(f"../../elsewhere/{world.inbox.name}/real.xlsx")
    (world.inbox / "plain.xlsx").write_bytes(xlsxwriter_bytes(rows_valid(3, seed=86)))

    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        await wait_for(settled_as(world, "plain.xlsx", "done"), 45, "the plain file imported")
        await asyncio.sleep(2)  # several more polls: the link stays where it is

    assert [r.name for r in rows(world)] == ["plain.xlsx"]
    assert [u.file_name for u in emulator.uploads] == ["plain.xlsx"]
    assert link.is_symlink()
    assert link.resolve() == target
    assert target.read_bytes() == content
    assert not any("link.xlsx" in str(e) for e in logs if e["log_level"] in ("error", "warning"))
