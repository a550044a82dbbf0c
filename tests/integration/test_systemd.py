"""The systemd side: sd_notify with a fake NOTIFY_SOCKET, and the unit file checked offline."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "systemd" / "isales-watcher.service"


async def test_ready_watchdog_and_stopping_are_sent(make_world, tmp_path):
    world = make_world()
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        "run",
        "--config",
        str(world.config),
        env={**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        first = (await asyncio.wait_for(loop.sock_recv(server, 4096), 30)).decode()
        assert first.startswith("READY=1")
        assert "STATUS=watching 1 route(s)" in first
        pings = [
            (await asyncio.wait_for(loop.sock_recv(server, 4096), 5)).decode() for _ in range(3)
        ]
        assert pings == ["WATCHDOG=1"] * 3
        process.send_signal(signal.SIGTERM)
        while (
            message := (await asyncio.wait_for(loop.sock_recv(server, 4096), 10)).decode()
        ) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
        server.close()


def _unit_for_this_machine(tmp_path: Path) -> Path:
    # systemd-analyze wants ExecStart to exist: point it at this virtualenv's entry point.
    entry = Path(sys.executable).with_name("isales-watcher")
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={entry}", UNIT.read_text(), flags=re.M)
    unit = tmp_path / "isales-watcher.service"
    unit.write_text(text)
    return unit


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (run .ci/run)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_the_unit_verifies_cleanly(tmp_path):
    result = _analyze("verify", "--man=no", str(_unit_for_this_machine(tmp_path)))
    # verify exits 0 on typos and bad values too, so its output must be empty as well.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_the_unit_is_hardened(tmp_path):
    result = _analyze("security", "--offline=yes", str(_unit_for_this_machine(tmp_path)))
    level = re.search(r"Overall exposure level for .*: (\d+\.\d+) (\w+)", result.stdout)
    assert level is not None, result.stdout + result.stderr
    assert float(level.group(1)) <= 2.0, level.group(0)
    assert level.group(2) == "OK"


def _credentials_the_unit_loads() -> list[str]:
    return re.findall(r"^LoadCredential=([^:\s]+):", UNIT.read_text(), flags=re.M)


def _bare_file_names_in_the_example() -> set[str]:
    from watcher.config_commands import example_text

    # The sample configuration the README points to: `isales-watcher config example`.
    return set(re.findall(r'^\w+_file = "([^/"]+)"', example_text(), flags=re.M))


def test_the_example_configuration_names_only_credentials_the_unit_loads():
    loaded = set(_credentials_the_unit_loads())
    assert {"isales_ak", "isales_sk", "sftp_key"} <= loaded
    named = _bare_file_names_in_the_example()
    assert named, "the example configuration names no credential"
    assert named <= loaded, f"the example names {sorted(named - loaded)}: the unit never loads them"


async def test_every_secret_comes_from_the_credentials_directory(
    make_world, run_daemon, sshd, tmp_path, monkeypatch
):
    from tests.conftest import ACCESS_KEY, SECRET_KEY, wait_for
    from tests.workbooks import rows_valid, xlsxwriter_bytes

    # What systemd makes of the unit's LoadCredential= lines: one file per credential.
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    sources = {
        "isales_ak": ACCESS_KEY,
        "isales_sk": SECRET_KEY,
        "sftp_key": sshd.client_key.read_text(),
    }
    for name in _credentials_the_unit_loads():
        (credentials / name).write_text(sources[name])
        (credentials / name).chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    world = make_world()
    text = world.config.read_text()
    text = re.sub(r'^access_key = .*$', 'access_key_file = "isales_ak"', text, flags=re.M)
    text = re.sub(r'^secret_key_file = .*$', 'secret_key_file = "isales_sk"', text, flags=re.M)
    text = re.sub(r'^private_key_file = .*$', 'private_key_file = "sftp_key"', text, flags=re.M)
    world.config.write_text(text)
    assert str(tmp_path / "sk") not in text  # nothing but bare names left

    await run_daemon(world)  # logs in over SFTP with the key from the credentials
    (world.inbox / "list.xlsx").write_bytes(xlsxwriter_bytes(rows_valid(3, seed=4)))
    await wait_for(world.settled("done", "list.xlsx.result.txt").exists, 30, "list.xlsx in done/")
