"""The control plane: /healthz, /readyz and /metrics of a running daemon."""

from __future__ import annotations

import asyncio
import os
import platform

import aiohttp
import pytest

from tests.conftest import cli, wait_for
from tests.sftpservers import free_port
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher import __version__
from watcher.settings import load_settings


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
    build = f'python="{platform.python_version()}",version="{__version__}"'
    assert f"isales_watcher_build_info{{{build}}} 1.0" in text
    assert daemon.control_address == f"127.0.0.1:{port}"
    # What a container's HEALTHCHECK runs: the daemon's own command, reading the port from the
    # configuration.
    code, output = await cli("probe", "ready", "--config", str(world.config))
    assert code == 0, output
    assert output.startswith("ready: ok")
    code, output = await cli("probe", "live", "--config", str(world.config))
    assert code == 0, output
    assert output.startswith("live: ok (loop_age_s=")


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
    code, output = await cli("probe", "ready", "--config", str(world.config))
    assert code == 1
    assert "ready: NO: failed: listing" in output


async def test_the_probe_says_why_it_cannot_ask(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[daemon]\ncontrol_listen = "0.0.0.0:{free_port()}"\n')  # nobody there
    code, output = await cli("probe", "live", "--config", str(config))
    assert code == 1
    assert "live: NO: no answer from http://127.0.0.1:" in output
    config.write_text('[daemon]\ncontrol_listen = ""\n')
    code, output = await cli("probe", "live", "--config", str(config))
    assert code == 1
    assert "the probe needs a fixed port" in output


async def test_the_version_is_printed():
    assert await cli("--version") == (0, f"isales-watcher {__version__}\n")


async def test_ready_names_a_route_whose_inbox_is_refused(
    make_world, run_daemon, emulator, chroot_sshd
):
    port = free_port()
    world = make_world(server="chroot_sshd", control_listen=f"127.0.0.1:{port}")
    os.chown(world.inbox, 0, 0)  # root's, mode 755: the SFTP user may list, not move files out
    world.inbox.chmod(0o755)
    route = load_settings(world.config).routes[0].name
    await run_daemon(world)
    async with aiohttp.ClientSession() as http:

        async def routes() -> dict[str, str]:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                return dict((await response.json()).get("routes", {}))

        for _ in range(100):
            if await routes():
                break
            await asyncio.sleep(0.1)
        async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
            assert response.status == 503
            body = await response.json()
        async with http.get(f"http://127.0.0.1:{port}/") as response:
            page = await response.text()
    assert body["checks"]["routes"] is False
    assert body["routes"][route].startswith(
        f"refused: the daemon cannot write in {world.remote_inbox}"
    )
    assert "refused: the daemon cannot write in" in page
    code, output = await cli("probe", "ready", "--config", str(world.config))
    assert code == 1
    assert f"routes={{'{route}': 'refused: the daemon cannot write in" in output
