"""``isales-watcher check`` and ``servers``: try every outside dependency once and explain it."""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Callable

from watcher.errors import ConfigError, WatcherError
from watcher.isales.client import IsalesClient, choose_server
from watcher.isales.replies import FileServer
from watcher.settings import Settings
from watcher.sources.sftp import SftpSource

__all__ = ("list_servers", "run_checks")

Say = Callable[[bool, str], None]


async def list_servers(settings: Settings) -> list[FileServer]:
    """The file servers registered in iSales for the configured VDN."""
    async with IsalesClient(settings.isales) as client:
        return await client.query_servers()


def _zone_line(settings: Settings, client: IsalesClient) -> tuple[bool, str]:
    """Where iSales' zone-less times are placed (beginTime, schedules), and its clock."""
    skew = f"its clock is {client.clock_skew_s:+.0f} s from ours"
    if settings.isales.server_utc_offset:
        zone = f"UTC{settings.isales.server_utc_offset} (isales.server_utc_offset)"
    elif client.date_zone is not None:
        zone = f"{client.date_zone} (from its Date header)"
    else:
        return True, (
            f"iSales' Date header is GMT, so its own zone is unknown; {skew}. If its beginTime "
            "values carry no zone, or a route has a schedule, set isales.server_utc_offset"
        )
    return True, f"iSales times without a zone are read as {zone}; {skew}"


async def _check_sftp(settings: Settings, say: Say) -> bool:
    source = SftpSource(settings.sftp)
    try:
        await source.connect()
        say(True, f"SFTP login to {source.address} as {settings.sftp.username}, host key verified")
        healthy = True
        for route in settings.routes:
            # A template route's campaign folders are made by the business: probe their parent.
            folder = route.parent if route.is_template else route.inbox_path
            probe = posixpath.join(folder, f".isales-watcher-check-{secrets.token_hex(4)}")
            try:
                await source.makedirs(folder)
                await source.write_file(probe, b"check\n")
                await source.remove_file(probe)
                say(True, f"route {route.name}: {folder} is writable")
            except WatcherError as exc:
                healthy = False
                say(False, f"route {route.name}: {folder} is not writable: {exc}")
        return healthy
    except WatcherError as exc:
        say(False, str(exc))
        return False
    finally:
        await source.close()


async def _check_isales(settings: Settings, say: Say) -> bool:
    configured = [settings.isales.server_id] if settings.isales.server_id else None
    try:
        async with IsalesClient(settings.isales) as client:
            servers = await client.query_servers(configured, retry=False)
    except WatcherError as exc:
        say(False, f"iSales at {settings.isales.base_url}: {exc}")
        return False
    say(True, f"iSales at {settings.isales.base_url} accepted the signature (queryServer)")
    say(*_zone_line(settings, client))
    try:
        server = choose_server(servers, settings)
    except ConfigError as exc:
        say(False, str(exc))
        return False
    say(
        True,
        f"file server {server.server_id} = {server.user_name}@{server.ip}:{server.port}, "
        f"default path {server.file_path}",
    )
    return True


async def run_checks(settings: Settings, say: Say) -> bool:
    """Check the file server, every inbox and iSales; ``say`` each verdict in one line."""
    sftp_ok = await _check_sftp(settings, say)
    isales_ok = await _check_isales(settings, say)
    return sftp_ok and isales_ok
