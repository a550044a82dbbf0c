"""Sidecar mode: the daemon sees the file server's disk; iSales still fetches over SFTP."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes


@pytest.mark.parametrize("force_polling", [False, True], ids=["inotify", "polling"])
async def test_a_file_dropped_on_the_shared_disk_is_imported(
    make_world, run_daemon, emulator, sshd, monkeypatch, force_polling
):
    # A 60 s listing period: only the file events can make this fast.
    monkeypatch.setenv("ISALES_WATCHER_DAEMON__POLL_INTERVAL_S", "60")
    local = f'\n[local]\nbase_dir = "{sshd.root}"\nforce_polling = {str(force_polling).lower()}\n'
    world = make_world(daemon_extra='source = "local"\n' + local)
    await run_daemon(world)
    data = xlsxwriter_bytes(rows_valid(6, seed=101))
    partial = world.inbox / ".list.xlsx.part"  # a careful uploader renames when done
    partial.write_bytes(data)
    partial.rename(world.inbox / "list.xlsx")
    await wait_for(world.settled("done", "list.xlsx.result.txt").exists, 20, "list.xlsx in done/")
    [call] = emulator.uploads
    assert call.file_path.startswith(f"/inbox/{world.inbox.name}/processing/")
    assert call.fetched_sha256 == hashlib.sha256(data).hexdigest()  # fetched over real SFTP


async def test_a_local_config_needs_no_sftp_login(tmp_path):
    from watcher.settings import load_settings

    (tmp_path / "sk").write_text("x")
    config = tmp_path / "c.toml"
    config.write_text(f"""
[isales]
base_url = "https://10.0.0.5:28443"
vdn_id = 1
access_key = "AK"
secret_key_file = "{tmp_path / "sk"}"
[sftp]
host = "10.0.0.7"
username = "isales"
base_path = "/home/sftp"
[[routes]]
name = "r"
inbox = "/home/sftp/in"
campaign_id = "1"
[daemon]
source = "local"
[local]
base_dir = "{tmp_path}"
""")
    assert load_settings(config).local.base_dir == tmp_path
