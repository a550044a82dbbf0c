"""SFTP servers differ: claim and settle hold on OpenSSH, ProFTPD's mod_sftp and Green End's.

What they answer differently (asyncssh client, SFTP version 3; status codes):

    request                        OpenSSH 9.2   gesftpserver     ProFTPD 1.3.8
    RENAME onto a taken name       4 "Failure"   4 "File exists"  11 "File already exists"
    RENAME of a missing name       2             2                2
    RENAME, missing onto taken     2             2                11
    posix-rename@openssh.com       yes           yes              yes; off with SFTPExtensions

Every server's way of saying "that name exists" must end as a name clash, never as an overwrite.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import show_logs_on_failure
from tests.sftpservers import SftpServer
from watcher.claim import claim
from watcher.errors import ClaimConflictError, FileGoneError
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, Outcome, RemoteEntry
from watcher.settings import RouteSettings
from watcher.settle import settle
from watcher.sources.sftp import SftpSource

SERVERS = ("openssh", "proftpd", "gesftpserver")
# Receipts go through write_file: also on a server without posix-rename, where it falls back.
WRITERS = (*SERVERS, "proftpd_without_posix_rename")
BYTES = b"PK\x03\x04 the list as uploaded"


@pytest.fixture
def server(request: pytest.FixtureRequest) -> SftpServer:
    served: SftpServer = request.getfixturevalue(f"{request.param}_sftp")
    show_logs_on_failure(request, served)
    return served


@dataclass
class Drop:
    """A fresh inbox on one server, a real SFTP source, and a real ledger."""

    server: SftpServer
    inbox: Path  # the local path of the inbox
    source: SftpSource
    ledger: Ledger
    route: RouteSettings

    def remote(self, local: Path) -> str:
        return self.server.remote(local)

    async def entry(self, name: str) -> RemoteEntry:
        """The file as the server lists it."""
        (found,) = [e for e in await self.source.list_files(self.route.inbox) if e.name == name]
        return found

    async def claimed(self, name: str) -> FileRecord:
        """``name`` dropped into the inbox and claimed."""
        (self.inbox / name).write_bytes(BYTES)
        record = await claim(self.source, self.ledger, self.route, await self.entry(name))
        assert record is not None
        return record

    def to_settle(self, record: FileRecord) -> FileRecord:
        """The row as the pipeline hands it to settle once iSales imported it."""
        return self.ledger.transition(
            record.id,
            FileState.settling,
            expect=FileState.claimed,
            outcome=Outcome.done,
            reason="imported",
        )


@pytest.fixture
async def drop(
    server: SftpServer, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Drop]:
    inbox = server.root / "inbox" / request.node.name.replace("[", "-").replace("]", "")
    inbox.mkdir(parents=True)
    route = RouteSettings(name="r", inbox=server.remote(inbox), campaign_id="c-1")
    source = SftpSource(server.settings)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        yield Drop(server, inbox, source, ledger, route)
    finally:
        await source.close()
        ledger.close()


def leftovers(folder: Path) -> list[str]:
    """Temporary files a write left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".isales-watcher-"))


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_a_claim_moves_the_file_into_processing(drop: Drop):
    record = await drop.claimed("list.xlsx")

    assert record.state is FileState.claimed
    assert (drop.inbox / "processing" / record.id / "list.xlsx").read_bytes() == BYTES
    assert not (drop.inbox / "list.xlsx").exists()


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_a_claim_whose_target_exists_is_lost_and_overwrites_nothing(drop: Drop, monkeypatch):
    # The target exists only if another actor wrote into processing/<id>/ first: pin the id so
    # that this test can be that actor.
    monkeypatch.setattr("watcher.ledger.new_file_id", lambda: "taken")
    theirs = drop.inbox / "processing" / "taken" / "list.xlsx"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"somebody else's file")
    (drop.inbox / "list.xlsx").write_bytes(BYTES)

    assert await claim(drop.source, drop.ledger, drop.route, await drop.entry("list.xlsx")) is None

    row = drop.ledger.get("taken")
    assert row.state is FileState.lost
    assert "already exists" in (row.reason or "")
    assert theirs.read_bytes() == b"somebody else's file"
    assert (drop.inbox / "list.xlsx").read_bytes() == BYTES


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_a_rename_onto_an_existing_name_is_a_name_clash(drop: Drop):
    # ProFTPD answers status 11, OpenSSH 4 "Failure", gesftpserver 4 "File exists".
    mine, theirs = drop.inbox / "mine.xlsx", drop.inbox / "theirs.xlsx"
    mine.write_bytes(BYTES)
    theirs.write_bytes(b"already there")

    with pytest.raises(ClaimConflictError, match="already exists"):
        await drop.source.rename(drop.remote(mine), drop.remote(theirs))
    assert theirs.read_bytes() == b"already there"
    assert mine.read_bytes() == BYTES

    # A name already moved away onto a taken name: ProFTPD still says 11, the others 2. Either
    # way a clash, which settle reads as "an earlier attempt of ours moved it there".
    gone = drop.remote(drop.inbox / "gone.xlsx")
    with pytest.raises(ClaimConflictError):
        await drop.source.rename(gone, drop.remote(theirs))
    assert theirs.read_bytes() == b"already there"

    await drop.source.rename(drop.remote(mine), drop.remote(drop.inbox / "free.xlsx"))
    assert (drop.inbox / "free.xlsx").read_bytes() == BYTES


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_a_file_gone_before_its_rename_is_gone_and_its_claim_lost(drop: Drop):
    (drop.inbox / "list.xlsx").write_bytes(BYTES)
    entry = await drop.entry("list.xlsx")
    (drop.inbox / "list.xlsx").unlink()  # the uploader took it back after the listing

    with pytest.raises(FileGoneError):
        await drop.source.rename(
            drop.remote(drop.inbox / "list.xlsx"), drop.remote(drop.inbox / "elsewhere.xlsx")
        )
    assert await claim(drop.source, drop.ledger, drop.route, entry) is None

    (row,) = drop.ledger.rows()
    assert row.state is FileState.lost
    assert not (drop.inbox / "processing" / row.id).exists()  # its folder is cleaned up


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_settle_moves_the_file_to_done_beside_its_receipts(drop: Drop):
    record = drop.to_settle(await drop.claimed("list.xlsx"))

    settled = await settle(drop.source, drop.ledger, record)

    done = drop.inbox / "done"
    assert settled.state is FileState.done
    assert (done / "list.xlsx").read_bytes() == BYTES
    assert json.loads((done / "list.xlsx.result.json").read_text())["ledger_id"] == record.id
    assert "list.xlsx" in (done / "list.xlsx.result.txt").read_text()
    assert not (drop.inbox / "processing" / record.id).exists()
    assert leftovers(done) == []


@pytest.mark.parametrize("server", WRITERS, indirect=True)
async def test_settle_writes_over_old_receipts_of_that_name(drop: Drop):
    done = drop.inbox / "done"
    done.mkdir()
    (done / "list.xlsx.result.json").write_text('{"old": true}')
    (done / "list.xlsx.result.txt").write_text("an old receipt")
    record = drop.to_settle(await drop.claimed("list.xlsx"))

    await settle(drop.source, drop.ledger, record)

    assert (done / "list.xlsx").read_bytes() == BYTES
    assert json.loads((done / "list.xlsx.result.json").read_text())["ledger_id"] == record.id
    assert "an old receipt" not in (done / "list.xlsx.result.txt").read_text()
    assert leftovers(done) == []


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_settle_never_moves_a_file_over_one_that_took_its_name(drop: Drop):
    done = drop.inbox / "done"
    done.mkdir()
    (done / "list.xlsx").write_bytes(b"an earlier list.xlsx")
    record = drop.to_settle(await drop.claimed("list.xlsx"))
    # Its target is chosen; then somebody drops a file of that very name into done/.
    chosen = done / f"list.{record.id}.xlsx"
    record = drop.ledger.update(record.id, settled_path=drop.remote(chosen))
    chosen.write_bytes(b"a file dropped meanwhile")

    settled = await settle(drop.source, drop.ledger, record)

    assert settled.state is FileState.done
    assert (done / "list.xlsx").read_bytes() == b"an earlier list.xlsx"
    assert chosen.read_bytes() == b"a file dropped meanwhile"
    assert (done / f"{record.id}.list.xlsx").read_bytes() == BYTES
    assert (done / f"{record.id}.list.xlsx.result.txt").exists()


@pytest.mark.parametrize("server", WRITERS, indirect=True)
async def test_write_file_replaces_an_existing_file(drop: Drop):
    receipt = drop.inbox / "list.xlsx.result.txt"
    receipt.write_text("the old receipt")

    await drop.source.write_file(drop.remote(receipt), b"the new receipt")

    assert receipt.read_bytes() == b"the new receipt"
    assert leftovers(drop.inbox) == []


@pytest.mark.parametrize(
    ("server", "has_posix_rename"),
    [*((name, True) for name in SERVERS), ("proftpd_without_posix_rename", False)],
    indirect=["server"],
)
async def test_posix_rename_is_there_where_expected(drop: Drop, has_posix_rename: bool):
    # Proof that the write_file tests above cover both the atomic path and the fallback.
    (drop.inbox / "a").write_bytes(b"a")
    (drop.inbox / "b").write_bytes(b"b")
    sftp = await drop.source.connect()
    try:
        await sftp.posix_rename(drop.remote(drop.inbox / "a"), drop.remote(drop.inbox / "b"))
    except asyncssh.SFTPOpUnsupported:
        assert not has_posix_rename
    else:
        assert has_posix_rename
        assert (drop.inbox / "b").read_bytes() == b"a"


@pytest.mark.parametrize("server", ["openssh"], indirect=True)
async def test_a_folder_removed_is_made_again_and_not_remembered(drop: Drop):
    folder = drop.remote(drop.inbox / "processing" / "one")
    await drop.source.makedirs(folder)
    await drop.source.remove_dir(folder)
    await drop.source.makedirs(folder)  # remembered as made, it would not be made again
    assert (drop.inbox / "processing" / "one").is_dir()
    await drop.source.remove_dir(folder)
    # Each claim's processing/<id>/ is removed when it settles: none is kept in memory.
    assert folder not in drop.source._folders


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_a_file_gone_before_its_first_settle_leaves_an_earlier_one_s_receipts(drop: Drop):
    done = drop.inbox / "done"
    done.mkdir()
    (done / "list.xlsx").write_bytes(b"an earlier list.xlsx")
    (done / "list.xlsx.result.json").write_text('{"ledger_id": "earlier"}')
    record = drop.to_settle(await drop.claimed("list.xlsx"))
    (drop.inbox / "processing" / record.id / "list.xlsx").unlink()  # removed by a person

    settled = await settle(drop.source, drop.ledger, record)

    assert settled.state is FileState.done
    assert (done / "list.xlsx").read_bytes() == b"an earlier list.xlsx"
    assert json.loads((done / "list.xlsx.result.json").read_text()) == {"ledger_id": "earlier"}
    assert settled.settled_path == drop.remote(done / f"list.{record.id}.xlsx")
    beside = json.loads((done / f"list.{record.id}.xlsx.result.json").read_text())
    assert beside["ledger_id"] == record.id


@pytest.mark.parametrize("server", SERVERS, indirect=True)
@pytest.mark.parametrize("moved", [False, True])
async def test_a_settle_killed_after_noting_its_target_finishes_on_restart(drop: Drop, moved):
    done = drop.inbox / "done"
    done.mkdir()
    record = drop.to_settle(await drop.claimed("list.xlsx"))
    # Killed after the target was noted: before the move (an earlier list.xlsx then took the
    # name), or after it.
    record = drop.ledger.update(record.id, settled_path=drop.remote(done / "list.xlsx"))
    if moved:
        (drop.inbox / "processing" / record.id / "list.xlsx").rename(done / "list.xlsx")
    else:
        (done / "list.xlsx").write_bytes(b"an earlier list.xlsx")

    settled = await settle(drop.source, drop.ledger, record)

    assert settled.state is FileState.done
    mine = done / ("list.xlsx" if moved else f"list.{record.id}.xlsx")
    assert settled.settled_path == drop.remote(mine)
    assert mine.read_bytes() == BYTES
    assert json.loads((done / f"{mine.name}.result.json").read_text())["ledger_id"] == record.id
    if not moved:
        assert (done / "list.xlsx").read_bytes() == b"an earlier list.xlsx"
        assert not (done / "list.xlsx.result.json").exists()
    assert not (drop.inbox / "processing" / record.id).exists()
