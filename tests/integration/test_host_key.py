"""The daemon refuses a file server whose host key it does not trust, and says so."""

from __future__ import annotations

import asyncio
import subprocess

import asyncssh
import pytest
import structlog

from tests.conftest import wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.errors import HostKeyError
from watcher.settings import load_settings
from watcher.sources.sftp import SftpSource


async def test_a_wrong_host_key_is_refused_and_nothing_is_touched(
    make_world, run_daemon, emulator, upload, sshd, tmp_path
):
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known_hosts = tmp_path / "wrong_known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    world = make_world(known_hosts=known_hosts)
    await upload(world.inbox / "list.xlsx", xlsxwriter_bytes(rows_valid(3)))
    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        await wait_for(
            lambda: any(e["event"] == "sftp.host_key_rejected" for e in logs),
            20,
            "the host key refusal",
        )
        await asyncio.sleep(1)
    [refusal, *_] = [e for e in logs if e["event"] == "sftp.host_key_rejected"]
    assert "refusing to connect" in refusal["error"]
    assert "not trusted" in refusal["error"]
    assert "SHA256:" in refusal["error"]
    assert (world.inbox / "list.xlsx").exists()
    assert not (world.inbox / "processing").exists()
    assert emulator.uploads == []


async def test_a_pinned_fingerprint_is_accepted_and_a_wrong_one_refused(sshd, make_world, tmp_path):
    world = make_world()
    settings = load_settings(world.config)
    fingerprint = subprocess.run(  # noqa: ASYNC221 - a few ms, before anything runs
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(sshd.known_hosts)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    pinned = settings.sftp.model_copy(
        update={"known_hosts_file": None, "host_key_fingerprint": fingerprint}
    )
    source = SftpSource(pinned)
    assert await source.list_files(str(world.inbox)) == []
    await source.close()

    wrong = settings.sftp.model_copy(
        update={"known_hosts_file": None, "host_key_fingerprint": "SHA256:" + "A" * 43}
    )
    with pytest.raises(HostKeyError, match=fingerprint.replace("+", r"\+")):
        await SftpSource(wrong).list_files(str(world.inbox))
