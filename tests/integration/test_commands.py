"""The operator's commands against a real sshd and the emulator."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import socket
import sqlite3
import sys

import pytest
import structlog

from tests.conftest import ACCESS_KEY, SECRET_KEY, cli, wait_for
from tests.sftpservers import free_port
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.isales.faults import Fault, FaultKind


async def test_check_passes_on_a_good_setup(make_world):
    world = make_world()
    code, output = await cli("check", "--config", str(world.config))
    assert code == 0, output
    assert "ok    SFTP login to" in output
    assert "host key verified" in output
    assert "files can be moved from" in output
    assert "accepted the signature" in output
    assert "file server fs-1" in output


async def test_check_explains_a_wrong_secret_key(make_world, tmp_path):
    world = make_world()
    (tmp_path / "sk").write_text("not-the-secret\n")
    code, output = await cli("check", "--config", str(world.config))
    assert code == 1
    assert "FAIL" in output
    assert "signature refused (HTTP 401): check access_key/secret_key and the clock" in output
    assert "signed at 20" in output
    assert SECRET_KEY not in output
    assert "not-the-secret" not in output


async def test_check_explains_a_wrong_host_key(make_world, tmp_path, sshd):
    other = tmp_path / "other_known_hosts"
    other.write_text(
        f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIJtXbM1xH0nvu8gE9sJ0nqPqzK5Ag7gZc3e9O6b1m8nQ\n"
    )
    world = make_world(known_hosts=other)
    code, output = await cli("check", "--config", str(world.config))
    assert code == 1
    assert "FAIL  refusing to connect" in output


def _only_check_lines(output: str) -> None:
    """Every line is the check's own: no log line, no retry notice, no traceback."""
    for line in output.splitlines():
        assert line.startswith(("ok    ", "FAIL  ")), line


async def test_check_asks_a_failing_isales_once_and_says_only_that(make_world, emulator):
    from watcher.isales.faults import Fault, FaultKind

    world = make_world()
    emulator.faults.script("query_server", *[Fault(FaultKind.status, status=503)] * 3)
    code, output = await cli("check", "--config", str(world.config))
    assert code == 1
    assert "FAIL  iSales at" in output
    assert "HTTP 503" in output
    assert "stamina" not in output
    _only_check_lines(output)
    assert [c.status for c in emulator.calls] == [503]  # asked once, not retried


async def test_check_with_nothing_listening_fails_each_part_in_one_line(make_world):
    world = make_world(sftp_port=free_port(), base_url=f"http://127.0.0.1:{free_port()}")
    code, output = await cli("check", "--config", str(world.config))
    assert code == 1
    assert "FAIL  cannot reach the SFTP server" in output
    assert "FAIL  iSales at" in output
    assert "cannot connect to iSales" in output
    _only_check_lines(output)


async def test_check_gives_up_on_a_silent_isales_after_its_timeout(make_world):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        world = make_world(base_url=f"http://127.0.0.1:{port}")
        code, output = await cli("check", "--config", str(world.config), "--timeout", "1")
    assert code == 1
    assert (
        f"FAIL  iSales at http://127.0.0.1:{port}: queryServer: iSales at 127.0.0.1:{port} "
        "did not answer within 1 s" in output
    )
    _only_check_lines(output)


async def test_servers_lists_the_registered_file_servers(make_world, sshd):
    world = make_world()
    code, output = await cli("servers", "--config", str(world.config))
    assert code == 0, output
    assert "fs-1" in output
    assert f"@127.0.0.1:{sshd.port}" in output


async def test_ledger_list_show_and_reprocess(make_world, run_daemon, upload):
    world = make_world()
    await run_daemon(world)
    await upload(world.inbox / "a.xlsx", xlsxwriter_bytes(rows_valid(3, seed=81)))
    await wait_for(world.settled("done", "a.xlsx.result.txt").exists, 30, "a.xlsx in done/")
    code, output = await cli("ledger", "list", "--config", str(world.config))
    assert code == 0
    assert "done" in output
    assert "a.xlsx" in output
    file_id = output.split()[0]
    code, output = await cli(
        "ledger", "list", "--state", "uncertain", "--config", str(world.config)
    )
    assert code == 0
    assert output.strip() == ""
    code, output = await cli("ledger", "show", file_id[:12], "--config", str(world.config))
    assert code == 0
    assert "claimed -> submitting" in output
    assert "tracking -> settling" in output
    code, output = await cli(
        "ledger", "reprocess", file_id, "--reason", "x", "--config", str(world.config)
    )
    assert code == 1
    assert "only a file parked as uncertain or rejected can be sent again" in output


async def test_fake_isales_serves_with_scripted_faults(tmp_path, sshd):
    from watcher.errors import ApiAmbiguousError
    from watcher.isales.client import IsalesClient
    from watcher.settings import IsalesSettings

    (tmp_path / "sk").write_text(SECRET_KEY)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        "fake-isales",
        "--listen",
        f"127.0.0.1:{port}",
        "--access-key",
        ACCESS_KEY,
        "--secret-key-file",
        str(tmp_path / "sk"),
        "--vdn",
        "3",
        "--server",
        f"fs-7={sshd.username}@127.0.0.1:{sshd.port}:{sshd.root}",
        "--sftp-key",
        str(sshd.client_key),
        "--known-hosts",
        str(sshd.known_hosts),
        "--campaign",
        "1001",
        "--fault",
        "query_server=503",
        "--fault",
        "query_server=503",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert b"fake iSales listening" in line
        settings = IsalesSettings(
            base_url=f"http://127.0.0.1:{port}",
            vdn_id=3,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            allow_insecure_http=True,
        )
        async with IsalesClient(settings) as client:
            with pytest.raises(ApiAmbiguousError, match="HTTP 503"):
                # One raw call, without the retries: it meets the first scripted 503.
                await client._call(
                    "/rest/isales/v1/openapi/campaigns/3/file/queryServer",
                    {"offset": 0, "limit": 1},
                )
            servers = await client.query_servers()  # the next 503 is retried away
        # The vendor's own sample entry (all addresses null) comes first, as on a real server.
        assert [s.server_id for s in servers][1:] == ["fs-7"]
        assert servers[0].ip is None
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_fake_isales_refuses_a_bad_option_in_one_line(tmp_path, sshd):
    from watcher.isales.faults import FaultKind

    (tmp_path / "sk").write_text(SECRET_KEY)
    options = ["fake-isales", "--access-key", ACCESS_KEY, "--campaign", "1001"]
    options += ["--secret-key-file", str(tmp_path / "sk")]
    code, output = await cli(*options, "--help")
    assert code == 0
    help_text = " ".join(output.split())  # argparse wraps lines
    for kind in FaultKind:
        assert kind.value in help_text or kind is FaultKind.status
    assert "Example: isales-watcher fake-isales" in help_text
    code, output = await cli(*options, "--known-hosts", str(tmp_path / "nonexistent"))
    assert code == 64
    assert output == f"isales-watcher: --known-hosts: {tmp_path / 'nonexistent'} does not exist\n"
    known = ["--known-hosts", str(sshd.known_hosts)]
    code, output = await cli(*options, *known, "--fault", "upload=bogus")
    assert code == 64
    assert output.count("\n") == 1
    assert "unknown fault 'bogus'; the faults are: STATUS[:RETRY_AFTER_S]" in output
    assert "broken_body" in output
    assert "delay[:SECONDS]" in output
    code, output = await cli(*options, *known, "--fault", "uplaod=503")
    assert code == 64
    assert "upload|query_tasks|query_server|*" in output
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, output = await cli(*options, *known, "--listen", f"127.0.0.1:{port}")
    assert code == 69
    assert output.startswith(f"isales-watcher: cannot listen on 127.0.0.1:{port}: ")
    assert output.count("\n") == 1


async def test_ledger_answers_what_happened_to_a_file(make_world, run_daemon, upload):
    world = make_world()
    await run_daemon(world)
    good = xlsxwriter_bytes(rows_valid(3, seed=86))
    await upload(world.inbox / "march calls.xlsx", good)
    rows = rows_valid(3, seed=87)
    rows[1][1] = "nope"
    await upload(world.inbox / "april.xlsx", xlsxwriter_bytes(rows))
    await wait_for(world.settled("done", "march calls.xlsx.result.txt").exists, 30, "march")
    await wait_for(world.settled("rejected", "april.xlsx.result.txt").exists, 30, "april")
    config = ("--config", str(world.config))
    # Filters, and --json for scripts; --config is taken before the sub-command as well.
    code, output = await cli("ledger", *config, "list", "--state", "rejected", "--json")
    assert code == 0, output
    [rejected] = json.loads(output)
    assert rejected["name"] == "april.xlsx"
    code, output = await cli("ledger", "list", "--name", "march*", "--since", "2020-01-01", *config)
    assert code == 0
    assert "march calls.xlsx" in output
    assert "april.xlsx" not in output
    code, output = await cli("ledger", "list", "--until", "2020-01-01", *config)
    assert output.strip() == ""
    # show by name or by SHA-256: the history, the receipts and the import's counts.
    code, output = await cli("ledger", "show", "march calls.xlsx", *config)
    assert code == 0, output
    assert "march calls.xlsx.result.txt" in output
    assert "import task" in output
    assert "tracking -> settling" in output
    sha = hashlib.sha256(good).hexdigest()
    code, by_sha = await cli("ledger", "show", sha[:12], *config)
    assert by_sha == output
    code, output = await cli("ledger", "show", "no-such-file.xlsx", *config)
    assert code == 1
    assert "no ledger row matches" in output
    # export: every transition of every file since a date.
    code, output = await cli("ledger", "export", "--since", "2020-01-01", *config)
    assert code == 0
    exported = list(csv.DictReader(io.StringIO(output)))
    assert {r["name"] for r in exported} == {"march calls.xlsx", "april.xlsx"}
    assert any(r["to_state"] == "done" for r in exported)
    code, output = await cli("ledger", "export", "--since", "2020", "--format", "json", *config)
    assert len(json.loads(output)) == len(exported)


def _accepted(emulator, name: str) -> int:
    """Uploads of ``name`` iSales accepted (a 429 is refused before anything is done)."""
    return sum(upload.file_name == name for upload in emulator.uploads)


@pytest.mark.parametrize("mode", ["sftp", "local"])
async def test_a_file_parked_while_the_daemon_works_on_it_is_dropped_not_sent(
    make_world, run_daemon, emulator, upload, sshd, mode
):
    extra = "retry_backoff_s = 0.2\nmax_backoff_s = 5\n"
    if mode == "local":
        extra += f'source = "local"\n[local]\nbase_dir = "{sshd.root}"\n'
    world = make_world(daemon_extra=extra)
    config = ("--config", str(world.config))
    # iSales is busy for as long as the test wants: the file goes back and forth between
    # claimed (waiting for Retry-After) and submitting (the POST), the daemon holding it.
    emulator.faults.script("upload", *[Fault(FaultKind.status, status=429, retry_after_s=1)] * 200)
    daemon = await run_daemon(world)
    with structlog.testing.capture_logs() as logs:
        await upload(world.inbox / "held.xlsx", xlsxwriter_bytes(rows_valid(3, seed=91)))
        await wait_for(
            lambda: any("uploadFileServer" in c.path for c in emulator.calls), 30, "a 429"
        )
        for _ in range(20):
            code, output = await cli(
                "ledger", "park", "held.xlsx", "--reason", "wrong campaign", "--by", "ann", *config
            )
            if code == 0:
                break
            # Caught during the POST: refused, and said so plainly.
            assert "its upload to iSales may be under way" in output, output
            assert "Traceback" not in output
        assert code == 0, output
        assert "is parked (by ann: wrong campaign)" in output
        await wait_for(
            lambda: any(e["event"] == "file.operator_took_over" for e in logs),
            30,
            "the daemon dropping its work",
        )
        emulator.faults.clear()
        # The daemon goes on with other files, and leaves the parked one alone.
        await upload(world.inbox / "other.xlsx", xlsxwriter_bytes(rows_valid(3, seed=92)))
        await wait_for(world.settled("done", "other.xlsx.result.txt").exists, 30, "other done")
    assert not any(e["event"] == "ledger.failed" for e in logs)
    assert _accepted(emulator, "held.xlsx") == 0
    code, output = await cli("ledger", "list", "--state", "parked", *config)
    assert "held.xlsx" in output
    assert "parked: wrong campaign" in output
    code, output = await cli("ledger", "unpark", "held.xlsx", "--by", "bob", *config)
    assert code == 0, output
    assert "is claimed again (by bob)" in output
    await wait_for(world.settled("done", "held.xlsx.result.txt").exists, 30, "held done")
    assert _accepted(emulator, "held.xlsx") == 1  # sent once, after the operator let it go
    code, output = await cli("ledger", "show", "held.xlsx", *config)
    assert "claimed -> parked  (ann) parked: wrong campaign" in output
    assert "parked -> claimed  (bob) unparked: by hand" in output
    assert not daemon.stop.is_set()


async def test_a_forgotten_list_may_be_imported_again(make_world, run_daemon, emulator, upload):
    world = make_world()
    config = ("--config", str(world.config))
    await run_daemon(world)
    data = xlsxwriter_bytes(rows_valid(3, seed=95))
    await upload(world.inbox / "list.xlsx", data)
    await wait_for(world.settled("done", "list.xlsx.result.txt").exists, 30, "list done")
    await upload(world.inbox / "again.xlsx", data)
    await wait_for(world.settled("rejected", "again.xlsx.result.txt").exists, 30, "a duplicate")
    code, output = await cli("ledger", "forget", "again.xlsx", "--reason", "x", *config)
    assert code == 0, output  # a rejected file may be forgotten: it counted for nothing
    code, output = await cli("ledger", "forget", "list.xlsx", "--reason", "reset", *config)
    assert code == 0, output
    assert "the same list may be imported again" in output
    code, output = await cli("ledger", "forget", "list.xlsx", "--reason", "reset", *config)
    assert code == 1
    assert "was forgotten already" in output
    await upload(world.inbox / "third.xlsx", data)
    await wait_for(world.settled("done", "third.xlsx.result.txt").exists, 30, "third imported")
    assert len(emulator.uploads) == 2
    assert world.settled("done", "list.xlsx.result.txt").exists()  # its receipt stays
    code, output = await cli("ledger", "park", "list.xlsx", "--reason", "x", *config)
    assert code == 1
    assert "is done: it is settled; there is nothing to hold" in output
    code, output = await cli("ledger", "unpark", "list.xlsx", *config)
    assert code == 1
    assert "is done, not parked" in output


async def test_a_busy_ledger_is_said_plainly(make_world, run_daemon, upload):
    world = make_world()
    await run_daemon(world)
    await upload(world.inbox / "b.xlsx", xlsxwriter_bytes(rows_valid(3, seed=96)))
    await wait_for(world.settled("done", "b.xlsx.result.txt").exists, 30, "b done")
    db = sqlite3.connect(world.state_dir / "ledger.sqlite3", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")  # another writer that does not let go
    try:
        code, output = await cli(
            "ledger", "forget", "b.xlsx", "--reason", "x", "--config", str(world.config)
        )
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert code == 70
    assert "is busy (another process held it for 5 s); try again in a moment" in output
    assert "Traceback" not in output
