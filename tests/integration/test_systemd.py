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
