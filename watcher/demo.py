"""``isales-watcher demo``: an SFTP server, the iSales emulator and the daemon, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import asyncssh

from watcher.cli import serve
from watcher.daemon import Daemon
from watcher.isales.emulator import Emulator, RegisteredServer
from watcher.samples import write_invalid_sample, write_valid_sample
from watcher.settings import load_settings

__all__ = ("run_demo",)

_USER = "isales"
_CAMPAIGN = "1001"


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class _ChrootServer(asyncssh.SFTPServer):
    root = "/"

    def __init__(self, chan: asyncssh.SSHServerChannel[Any]) -> None:
        super().__init__(chan, chroot=self.root.encode())


def _keys(folder: Path) -> tuple[asyncssh.SSHKey, asyncssh.SSHKey]:
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for name in ("host_ed25519", "client_ed25519"):
        path = folder / name
        if not path.exists():
            asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path))
            path.chmod(0o600)
        keys.append(asyncssh.read_private_key(str(path)))
    return keys[0], keys[1]


async def _drop(inbox: Path, name: str, writer: Any) -> None:
    # Written under a temporary name and renamed, as a careful uploader does.
    temporary = inbox / f".{name}.part"
    await asyncio.to_thread(writer, temporary)
    temporary.rename(inbox / name)


def _settled(inbox: Path, name: str) -> bool:
    return any((inbox / folder / f"{name}.result.txt").exists() for folder in ("done", "rejected"))


async def run_demo(folder: Path, *, once: bool = False, keep: bool = False) -> None:
    """Start everything, drop a valid and an invalid sample, and run until stopped.

    Each run starts clean (its emulator forgets every import, so an old ledger would call the
    samples duplicates of tasks that no longer exist), unless ``keep`` is given.
    """
    # The demo's own small local files are written synchronously at start-up, before any load.
    root = folder.resolve()  # noqa: ASYNC240
    if not keep and (root / "config.toml").exists():  # only a folder the demo made itself
        shutil.rmtree(root)
    files = root / "sftp"
    inbox = files / "inbox" / "demo"
    inbox.mkdir(parents=True, exist_ok=True)
    host_key, client_key = _keys(root / "keys")
    _ChrootServer.root = str(files)
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
        sftp_factory=_ChrootServer,
        allow_scp=False,
    )
    port = server.sockets[0].getsockname()[1]
    known_hosts = root / "keys" / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.export_public_key().decode()}")
    access_key, secret_key = "demo-ak", secrets.token_hex(16)
    (root / "keys" / "isales_sk").write_text(secret_key)
    emulator = Emulator(
        access_key=access_key,
        secret_key=secret_key,
        vdn_id=1,
        campaigns={_CAMPAIGN},
        servers=[
            RegisteredServer(
                server_id="demo-sftp",
                ip="127.0.0.1",
                port=port,
                user_name=_USER,
                file_path="/",
                connect_options={"client_keys": [client_key], "known_hosts": str(known_hosts)},
            )
        ],
    )
    base_url = await emulator.start()
    config = root / "config.toml"
    config.write_text(f"""\
# Written by 'isales-watcher demo'. The same file works with 'isales-watcher run --config'.
[isales]
base_url = "{base_url}"
allow_insecure_http = true   # the emulator on loopback; a real iSales needs https://
vdn_id = 1
access_key = "{access_key}"
secret_key_file = "{root / "keys" / "isales_sk"}"
track_poll_s = 0.5

[sftp]
host = "127.0.0.1"
port = {port}
username = "{_USER}"
private_key_file = "{root / "keys" / "client_ed25519"}"
known_hosts_file = "{known_hosts}"
base_path = "/"

[[routes]]
name = "demo"
inbox = "/inbox/demo"
campaign_id = "{_CAMPAIGN}"

[daemon]
poll_interval_s = 0.5
settle_s = 1
state_dir = "{root / "state"}"
control_listen = "127.0.0.1:0"   # the status page, /healthz /readyz /metrics on a free port
""")
    daemon = Daemon(load_settings(config), config_path=config)
    runner = asyncio.create_task(serve(daemon))
    try:
        await asyncio.wait(
            [runner, asyncio.create_task(daemon.ready.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if runner.done():
            return
        stamp = secrets.token_hex(2)
        valid, invalid = f"valid-{stamp}.xlsx", f"invalid-{stamp}.xlsx"
        await _drop(inbox, valid, lambda p: write_valid_sample(p, seed=int(stamp, 16)))
        await _drop(inbox, invalid, write_invalid_sample)
        _say(f"\nDemo running. Inbox: {inbox}")
        _say(f"Dropped {valid} (valid) and {invalid} (invalid). Watch them land in")
        _say(f"  {inbox / 'done'}  and  {inbox / 'rejected'}")
        _say(f"Status page: http://{daemon.control_address}/ (metrics: /metrics)")
        if not once:
            _say("Drop your own .xlsx files into the inbox. Ctrl-C stops.\n")
        while once and not runner.done():
            if _settled(inbox, valid) and _settled(inbox, invalid):
                for name in (valid, invalid):
                    for outcome in ("done", "rejected"):
                        receipt = inbox / outcome / f"{name}.result.txt"
                        if receipt.exists():
                            _say(f"--- {outcome}/{receipt.name}\n{receipt.read_text()}")
                daemon.request_stop()
                break
            await asyncio.sleep(0.2)
        await runner
    finally:
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        await emulator.close()
        server.close()
        await server.wait_closed()
