"""The operator's commands against a real sshd and the emulator."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import socket
import sys

import pytest

from tests.conftest import ACCESS_KEY, SECRET_KEY, cli, wait_for
from tests.sftpservers import free_port
from tests.workbooks import rows_valid, xlsxwriter_bytes


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
