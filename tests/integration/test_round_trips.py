"""SFTP requests per file, counted from OpenSSH's own request log (``sftp-server -l DEBUG3``).

Over a link with 50 ms of latency, every request is 50 ms of a user's wait. The daemon's session
is told apart from iSales' fetches by its log (one log per session); its requests are given to
the file they touch, by path, and listings and the lease are left out: they are per cycle.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import settled_as, wait_for
from tests.sftpservers import Request, Sshd, counting_sshd_at, requests_of, session_logs
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.ledger import Ledger
from watcher.sources.sftp import SftpSource

# Per file: probe, claim, download, settle, two receipts (issue 10).
MAX_REQUESTS_PER_FILE = 24


@pytest.fixture(scope="module")
def counting_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """An sshd whose SFTP server writes every request to a log of its own, one per session."""
    with counting_sshd_at(tmp_path_factory.mktemp("counting-sshd")) as server:
        yield server


def _daemon_session(sshd: Sshd, inbox: str) -> Path:
    """The log of the session that listed the inbox: the daemon's (iSales' fetch only reads)."""
    for log in session_logs(sshd):
        if f'opendir "{inbox}"' in log.read_text(errors="replace"):
            return log
    pytest.fail(f"no SFTP session listed {inbox}")


def _per_cycle(request: Request, inbox: str) -> bool:
    """A listing of the inbox or the lease: paid per poll, not per file."""
    if not request.paths:
        return True  # the session's "limits" handshake
    return all(p == inbox or p.startswith(f"{inbox}/.isales-watcher") for p in request.paths)


def _owner(path: str, ids: dict[str, str], session: list[Request]) -> str | None:
    """The dropped file a path belongs to: by its name, its ``processing/<id>`` folder, or (a
    temporary receipt) the receipt it is renamed to."""
    for request in session:
        if request.op.endswith("rename") and request.paths[:1] == [path]:
            path = request.paths[-1]
            break
    base = path.rpartition("/")[2]
    for file_id, name in ids.items():
        if base in (name, file_id) or base.startswith(f"{name}.result.") or f"/{file_id}/" in path:
            return name
    return None


async def test_a_small_file_costs_at_most_24_sftp_requests(
    counting_sshd, make_world, run_daemon, emulator
):
    world = make_world(server="counting_sshd")
    await run_daemon(world)
    names = [f"list-{i}.xlsx" for i in range(4)]
    for seed, name in enumerate(names):
        # One at a time, so that the folder requests made once per route stand out.
        (world.inbox / f".{name}.part").write_bytes(xlsxwriter_bytes(rows_valid(3, seed=seed)))
        (world.inbox / f".{name}.part").rename(world.inbox / name)
        await wait_for(settled_as(world, name, "done"), 30, f"{name} done")
    await asyncio.sleep(0.5)  # the last receipt's log lines

    inbox = world.remote_inbox
    session = requests_of(_daemon_session(counting_sshd, inbox))
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    ids = {record.id: record.name for record in ledger.rows()}
    ledger.close()
    per_file: dict[str, Counter[str]] = {name: Counter() for name in names}
    route_level: Counter[str] = Counter()
    for request in session:
        if _per_cycle(request, inbox):
            continue
        owners = {_owner(path, ids, session) for path in request.paths} - {None}
        if len(owners) == 1:
            per_file[str(owners.pop())][request.op] += 1
        else:
            route_level[request.op] += 1
    print(f"\nSFTP requests per file: { {n: sum(c.values()) for n, c in per_file.items()} }")
    print(f"the last file's: {dict(per_file[names[-1]])}")
    print(f"the route's (folders made once): {dict(route_level)}")
    for name in names:
        assert sum(per_file[name].values()) <= MAX_REQUESTS_PER_FILE, (name, per_file[name])
    # Once per start, whatever the number of files: the access check (a probe file moved
    # through processing/, done/ and rejected/, then removed) makes the folders.
    assert sum(route_level.values()) <= 12, route_level


async def test_a_big_file_is_read_in_pipelined_chunks(counting_sshd, tmp_path):
    """20 MB: reads of the server's largest length, in chunks asyncssh pipelines, not 32 KB each."""
    source = SftpSource(counting_sshd.sftp_server("openssh").settings)
    data = os.urandom(20 * 1024 * 1024)
    folder = counting_sshd.root / "big"
    folder.mkdir(exist_ok=True)
    (folder / "big.bin").write_bytes(data)
    before = set(session_logs(counting_sshd))
    try:
        digest = await source.download(counting_sshd.remote(folder / "big.bin"), tmp_path / "copy")
    finally:
        await source.close()
    await asyncio.sleep(0.3)
    assert digest == hashlib.sha256(data).hexdigest()
    [log] = set(session_logs(counting_sshd)) - before
    lines = log.read_text().splitlines()
    reads = [line for line in lines if re.match(r"^debug\d: request \d+: read ", line)]
    lengths = Counter(int(line.rsplit(" ", 1)[1]) for line in reads)
    print(f"\n20 MB: {len(reads)} read requests, lengths {dict(lengths)}")
    # The server's largest read (OpenSSH: 255 KiB), sent 32 at a time by asyncssh (a chunk of
    # 8 MiB): about 80 requests where 32 KiB reads would take 640.
    assert len(reads) <= 20 * 1024 * 1024 // (128 * 1024) + 4, lengths
    assert lengths.most_common(1)[0][0] >= 128 * 1024, lengths


async def test_an_unchanged_crowded_inbox_costs_one_stat_per_poll(
    counting_sshd, make_world, run_daemon, emulator
):
    world = make_world(server="counting_sshd", daemon_extra="full_listing_every = 10")
    for i in range(2000):  # uploads in progress, by their names: never the daemon's
        (world.inbox / f".upload-{i:05}.xlsx.part").write_bytes(b"PK")
    daemon = await run_daemon(world)
    await asyncio.sleep(6)  # 0.3 s polls: about 20
    daemon.request_stop()
    inbox = world.remote_inbox
    session = requests_of(_daemon_session(counting_sshd, inbox))
    opened = sum(1 for r in session if r.op == "opendir" and r.paths == [inbox])
    stats = sum(1 for r in session if r.op == "stat" and r.paths == [inbox])
    print(f"\n2,000 names, 6 s of 0.3 s polls: {stats} stats of the inbox, {opened} listings")
    assert stats >= 12, stats
    # The first listings (until its mtime is 2 s old), then one every 10 polls.
    assert opened <= 2 + 8 + stats // 10, (opened, stats)
