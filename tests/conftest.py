"""Shared fixtures: real SFTP servers on loopback, the iSales emulator, configs, workbooks."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import structlog

from tests.sftpservers import (
    GESFTPSERVER,
    SftpServer,
    Sshd,
    require,
    running_chrooted_sshd,
    running_proftpd,
    running_sshd,
)
from watcher.daemon import Daemon
from watcher.isales.emulator import Emulator, RegisteredServer
from watcher.ledger import Ledger
from watcher.models import FileRecord
from watcher.settings import load_settings

ACCESS_KEY = "test-ak"
SECRET_KEY = "test-sk-0123456789"
VDN = 7


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """Real OpenSSH sshd on 127.0.0.1:<free port>, key auth, internal-sftp."""
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def chroot_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """The same sshd, where a non-root user (``isales-ci``) is chrooted and sees ``/data``.

    Its ``root`` is the local folder shown as ``/data``; ``remote()`` turns a local path into
    the user's. Permission errors need it: root reads and writes whatever the modes say.
    """
    with running_chrooted_sshd(tmp_path_factory.mktemp("chroot-sshd")) as server:
        yield server


# The SFTP servers the claim and settle steps are proven against (tests/sftpservers.py).
@pytest.fixture(scope="session")
def openssh_sftp(sshd: Sshd) -> SftpServer:
    return sshd.sftp_server("openssh")


@pytest.fixture(scope="session")
def gesftpserver_sftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """The Green End SFTP server, as the sftp subsystem of an OpenSSH sshd."""
    require(GESFTPSERVER, "gesftpserver")
    folder = tmp_path_factory.mktemp("gesftpserver")
    with running_sshd(folder, subsystem=GESFTPSERVER) as server:
        yield server.sftp_server("gesftpserver")


@pytest.fixture(scope="session")
def proftpd_sftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """ProFTPD's mod_sftp."""
    with running_proftpd(tmp_path_factory.mktemp("proftpd"), name="proftpd") as server:
        yield server


@pytest.fixture(scope="session")
def proftpd_without_posix_rename_sftp(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SftpServer]:
    """ProFTPD's mod_sftp with posix-rename@openssh.com turned off."""
    folder = tmp_path_factory.mktemp("proftpd-nopr")
    with running_proftpd(folder, name="proftpd_without_posix_rename", posix_rename=False) as server:
        yield server


SERVER_LOGS = pytest.StashKey[list[SftpServer]]()


def show_logs_on_failure(request: pytest.FixtureRequest, server: SftpServer) -> None:
    """Add ``server``'s logs to the report of this test if it fails."""
    request.node.stash.setdefault(SERVER_LOGS, []).append(server)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for server in item.stash.get(SERVER_LOGS, []):
            report.sections.append((f"{server.name} logs", server.log_text()))
    return report


def registered(server_id: str, sshd: Sshd) -> RegisteredServer:
    """The sshd as iSales knows a file server: its address, user and default path."""
    return RegisteredServer(
        server_id,
        sshd.host,
        sshd.port,
        sshd.username,
        sshd.base_path,
        connect_options=sshd.connect_options(),
    )


def new_emulator(sshd: Sshd, *, import_delay_s: float = 0.2) -> Emulator:
    """An emulator (not started) with the sshd registered as file server ``fs-1``, no campaign."""
    return Emulator(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        vdn_id=VDN,
        import_delay_s=import_delay_s,
        campaigns=set(),  # make_world registers the campaign of each route it writes
        servers=[registered("fs-1", sshd)],
    )


@pytest.fixture
async def emulator(sshd: Sshd) -> AsyncIterator[Emulator]:
    """The iSales emulator over real HTTP, with the sshd registered as file server ``fs-1``.

    No campaign exists until a test adds one (``make_world`` adds its route's).
    """
    emu = new_emulator(sshd)
    await emu.start()
    yield emu
    await emu.close()


@dataclass
class World:
    """A test's own route on the shared sshd, and its configuration file."""

    config: Path
    inbox: Path  # the local path of the route's inbox
    state_dir: Path
    campaign: str
    remote_inbox: str  # the inbox as the daemon's SFTP user sees it (configured as the route's)

    def settled(self, outcome: str, name: str) -> Path:
        return self.inbox / outcome / name


@pytest.fixture
def make_world(
    sshd: Sshd, emulator: Emulator, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., World]:
    """Write a configuration for a fresh route; keyword arguments override TOML values.

    ``server`` names the sshd fixture the daemon logs in to (``chroot_sshd``: a non-root
    user); the inbox then belongs to that user, and iSales knows that server as ``fs-<server>``.
    """
    counter = iter(range(1000))

    def make(
        *,
        sftp_port: int | None = None,
        known_hosts: Path | None = None,
        server_id: str = "",
        settle_s: float = 0.6,
        daemon_extra: str = "",
        route_extra: str = "",
        base_url: str | None = None,
        isales_extra: str = "allow_insecure_http = true",
        control_listen: str = "",
        server: str = "sshd",
    ) -> World:
        served: Sshd = request.getfixturevalue(server)
        if served is not sshd and f"fs-{server}" not in emulator.servers:
            emulator.servers[f"fs-{server}"] = registered(f"fs-{server}", served)
        digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]
        name = f"{request.node.originalname[:32]}-{digest}-{next(counter)}"
        inbox = served.root / "inbox" / name
        inbox.mkdir(parents=True)
        account = pwd.getpwnam(served.username)
        if account.pw_uid != os.geteuid():
            os.chown(inbox, account.pw_uid, account.pw_gid)
        state = tmp_path / f"state-{name}"
        (tmp_path / "sk").write_text(SECRET_KEY + "\n")
        config = tmp_path / f"{name}.toml"
        config.write_text(f"""\
[isales]
base_url = "{base_url or emulator.base_url}"
{isales_extra}
vdn_id = {VDN}
access_key = "{ACCESS_KEY}"
secret_key_file = "{tmp_path / "sk"}"
server_id = "{server_id}"
track_poll_s = 0.2

[sftp]
host = "127.0.0.1"
port = {sftp_port or served.port}
username = "{served.username}"
private_key_file = "{served.client_key}"
known_hosts_file = "{known_hosts or served.known_hosts}"
base_path = "{served.base_path}"
op_timeout_s = 20

[[routes]]
name = "r{abs(hash(name)) % 10**8}"
inbox = "{served.remote(inbox)}"
campaign_id = "c-{name}"
{route_extra}

[daemon]
poll_interval_s = 0.3
settle_s = {settle_s}
state_dir = "{state}"
control_listen = "{control_listen}"
shutdown_grace_s = 5
{daemon_extra}
""")
        emulator.campaigns.add(f"c-{name}")
        return World(config, inbox, state, f"c-{name}", served.remote(inbox))

    return make


def rows(world: World) -> list[FileRecord]:
    """The world's ledger rows, newest first."""
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    try:
        return ledger.rows()
    finally:
        ledger.close()


def settled_as(world: World, name: str, outcome: str) -> Callable[[], bool]:
    """The ledger says the file ended so: wait on the state asserted, not on the receipt."""

    def check() -> bool:
        ledger = Ledger(world.state_dir / "ledger.sqlite3")
        try:
            return any(r.name == name and r.state.value == outcome for r in ledger.rows())
        finally:
            ledger.close()

    return check


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 30, what: str = "") -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


async def route_refusal(start: Callable[[World], Awaitable[Daemon]], world: World) -> str:
    """Start a daemon on ``world`` and return the one ``route.scan_failed`` error it logs (once,
    not at every poll)."""
    with structlog.testing.capture_logs() as logs:
        await start(world)
        await wait_for(
            lambda: any(e["event"] == "route.scan_failed" for e in logs), 30, "the refusal"
        )
        await asyncio.sleep(1)  # more polls: said once
    [refusal] = [e for e in logs if e["event"] == "route.scan_failed"]
    return str(refusal["error"])


@pytest.fixture
def upload(sshd: Sshd) -> Callable[..., Awaitable[None]]:
    """Upload bytes over SFTP as a person would, optionally in slow pieces."""

    async def put(
        remote: Path,
        data: bytes,
        *,
        pieces: int = 1,
        pause_s: float = 0.0,
        between: Callable[[], None] | None = None,
    ) -> None:
        async with (
            asyncssh.connect(
                sshd.host, sshd.port, username=sshd.username, **sshd.connect_options()
            ) as conn,
            conn.start_sftp_client() as sftp,
            sftp.open(str(remote), "wb") as f,
        ):
            step = -(-len(data) // pieces)
            for i in range(pieces):
                await f.write(data[i * step : (i + 1) * step], i * step)
                if pause_s and i < pieces - 1:
                    await asyncio.sleep(pause_s)
                    if between is not None:
                        between()

    return put


@pytest.fixture
async def run_daemon() -> AsyncIterator[Callable[[World], Awaitable[Daemon]]]:
    """Start an in-process daemon for a world; it is stopped (and must stop cleanly) at the end."""
    running: list[tuple[Daemon, asyncio.Task[None]]] = []

    async def start(world: World) -> Daemon:
        daemon = Daemon(load_settings(world.config), config_path=world.config)
        task = asyncio.create_task(daemon.run())
        running.append((daemon, task))
        await asyncio.wait(
            [task, asyncio.create_task(daemon.ready.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if task.done():
            task.result()
        return daemon

    yield start
    for daemon, task in running:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)


async def cli(*args: str) -> tuple[int, str]:
    """Run ``isales-watcher ARGS`` in a process; (exit code, stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, output.decode()
