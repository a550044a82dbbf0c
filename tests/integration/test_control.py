"""The control plane: /healthz, /readyz and /metrics of a running daemon."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import wait_for
from tests.sftpservers import free_port
from tests.workbooks import rows_valid, xlsxwriter_bytes


async def test_probes_and_metrics(make_world, run_daemon, emulator, upload):
    port = free_port()
    world = make_world(control_listen=f"127.0.0.1:{port}")
    daemon = await run_daemon(world)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200

        async def ready() -> bool:
            async with http.get(f"{base}/readyz") as response:
                return response.status == 200

        for _ in range(100):  # ready after the first good listing
            if await ready():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the daemon never became ready")

        await upload(world.inbox / "m.xlsx", xlsxwriter_bytes(rows_valid(3, seed=121)))
        await wait_for(world.settled("done", "m.xlsx.result.txt").exists, 30, "m.xlsx in done/")
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    assert 'isales_watcher_files{state="done"} 1.0' in text
    assert 'isales_watcher_api_seconds_count{call="uploadFileServer",outcome="ok"} 1.0' in text
    assert "isales_watcher_validation_seconds_count 1.0" in text
    assert "isales_watcher_oldest_waiting_seconds" in text
    assert daemon.control_address == f"127.0.0.1:{port}"


async def test_not_ready_while_the_file_server_is_unreachable(
    make_world, run_daemon, sshd, tmp_path
):
    port = free_port()
    dead = free_port()  # nothing listens there
    known_hosts = tmp_path / "kh"
    known_hosts.write_text(f"[127.0.0.1]:{dead} {sshd.host_pub}\n")
    world = make_world(
        control_listen=f"127.0.0.1:{port}",
        sftp_port=dead,
        known_hosts=known_hosts,
        server_id="fs-1",
    )
    await run_daemon(world)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            body = await response.json()
            assert response.status == 503
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200  # alive: it keeps trying
    assert body["checks"]["listing"] is False
    assert body["checks"]["ledger"] is True
