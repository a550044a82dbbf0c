"""iSales over HTTPS: a private CA works when configured, and an unverifiable server is refused."""

from __future__ import annotations

import asyncio

import structlog

from tests.conftest import ACCESS_KEY, SECRET_KEY, VDN, wait_for
from tests.tls import make_ca_and_server
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.isales.emulator import Emulator, RegisteredServer


def _emulator(sshd) -> Emulator:
    server = RegisteredServer(
        "fs-9", sshd.host, sshd.port, sshd.username, str(sshd.root), sshd.connect_options()
    )
    return Emulator(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        vdn_id=VDN,
        import_delay_s=0.1,
        servers=[server],
        campaigns=set(),
    )


async def test_https_with_a_private_ca(make_world, run_daemon, upload, sshd, tmp_path):
    ca_file, context = make_ca_and_server(tmp_path)
    emu = _emulator(sshd)
    url = await emu.start(ssl_context=context)
    assert url.startswith("https://")
    try:
        world = make_world(base_url=url, isales_extra=f'ca_file = "{ca_file}"')
        emu.campaigns.add(world.campaign)
        await run_daemon(world)
        await upload(world.inbox / "tls.xlsx", xlsxwriter_bytes(rows_valid(3, seed=21)))
        await wait_for(world.settled("done", "tls.xlsx.result.txt").exists, 30, "tls.xlsx in done/")
        assert [u.file_name for u in emu.uploads] == ["tls.xlsx"]
    finally:
        await emu.close()


async def test_an_unverifiable_certificate_is_refused(make_world, run_daemon, sshd, tmp_path):
    _, context = make_ca_and_server(tmp_path)
    emu = Emulator(
        access_key=ACCESS_KEY, secret_key=SECRET_KEY, vdn_id=VDN, servers=[], campaigns=set()
    )
    url = await emu.start(ssl_context=context)
    try:
        world = make_world(base_url=url, isales_extra="")
        with structlog.testing.capture_logs() as logs:
            runner = asyncio.create_task(run_daemon(world))  # it never gets ready
            await wait_for(
                lambda: any(e["event"] == "isales.unavailable" for e in logs), 20, "the TLS refusal"
            )
            runner.cancel()
        [event, *_] = [e for e in logs if e["event"] == "isales.unavailable"]
        assert "cannot verify the TLS certificate" in event["error"]
        assert "ca_file" in event["error"]
        assert emu.calls == []
    finally:
        await emu.close()


async def test_a_pinned_certificate_is_trusted_and_another_refused(
    make_world, run_daemon, upload, sshd, tmp_path
):
    import hashlib
    import ssl as ssl_module

    _, context = make_ca_and_server(tmp_path)
    emu = _emulator(sshd)
    url = await emu.start(ssl_context=context)
    der = ssl_module.PEM_cert_to_DER_cert((tmp_path / "server.pem").read_text())
    pin = hashlib.sha256(der).hexdigest()
    try:
        world = make_world(base_url=url, isales_extra=f'tls_fingerprint = "{pin}"')
        emu.campaigns.add(world.campaign)
        await run_daemon(world)
        await upload(world.inbox / "pin.xlsx", xlsxwriter_bytes(rows_valid(3, seed=22)))
        await wait_for(world.settled("done", "pin.xlsx.result.txt").exists, 30, "pin.xlsx in done/")

        wrong = make_world(base_url=url, isales_extra=f'tls_fingerprint = "{"00" * 32}"')
        with structlog.testing.capture_logs() as logs:
            runner = asyncio.create_task(run_daemon(wrong))  # it never gets ready
            await wait_for(
                lambda: any(e["event"] == "isales.unavailable" for e in logs), 20, "the pin refusal"
            )
            runner.cancel()
        [event, *_] = [e for e in logs if e["event"] == "isales.unavailable"]
        assert "not the pinned one" in event["error"]
    finally:
        await emu.close()
