"""``isales-watcher check`` and ``servers``: try every outside dependency once and explain it."""

from __future__ import annotations

from collections.abc import Callable

from watcher.errors import ConfigError, SourceRefusedError, WatcherError
from watcher.isales.client import IsalesClient, choose_server
from watcher.isales.replies import FileServer
from watcher.settings import RouteSettings, Settings, is_campaign_folder
from watcher.sources import Source, check_access, make_source
from watcher.sources.sftp import SftpSource

__all__ = ("briefly", "list_servers", "run_checks")

Say = Callable[[bool, str], None]


def briefly(settings: Settings, timeout_s: float) -> Settings:
    """The settings with every network deadline at ``timeout_s``: a check asks once, briefly.

    The SFTP connection has two deadlines (connect, then log in) inside one of twice the
    connect timeout: each gets half, so the whole connection fits in ``timeout_s`` too.
    """
    isales = settings.isales.model_copy(update={"request_timeout_s": timeout_s})
    sftp = settings.sftp.model_copy(
        update={"connect_timeout_s": timeout_s / 2, "op_timeout_s": timeout_s}
    )
    return settings.model_copy(update={"isales": isales, "sftp": sftp})


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


async def _check_route(source: Source, route: RouteSettings, say: Say) -> bool:
    """May the daemon work in this route's inbox (or, for a template, in every campaign folder)?"""
    if not route.is_template:
        inboxes = [route.inbox_path]
    else:
        # The campaign folders are made by the business: the parent must take new ones.
        try:
            await check_access(source, route.parent, folders=False)
        except SourceRefusedError as exc:
            say(False, f"route {route.name}: {exc}")
            return False
        say(True, f"route {route.name}: {route.parent} is writable")
        inboxes = [
            route.for_campaign(name).inbox_path
            for name in await source.list_folders(route.parent)
            if is_campaign_folder(name)
        ]
    healthy = True
    for inbox in inboxes:
        try:
            await check_access(source, inbox)
            say(
                True,
                f"route {route.name}: files can be moved from {inbox} into processing/, "
                "done/ and rejected/",
            )
        except SourceRefusedError as exc:
            healthy = False
            say(False, f"route {route.name}: {exc}")
    return healthy


async def _check_source(settings: Settings, say: Say) -> bool:
    source = make_source(settings)
    try:
        if isinstance(source, SftpSource):
            await source.connect()
            say(
                True,
                f"SFTP login to {source.address} as {settings.sftp.username}, host key verified",
            )
        else:
            assert settings.local is not None
            say(True, f"local mode: the file server's disk is {settings.local.base_dir}")
        results = [await _check_route(source, route, say) for route in settings.routes]
        return all(results)
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
    path = server.file_path or "unknown: filePath is sent relative to sftp.base_path"
    say(
        True,
        f"file server {server.server_id} = {server.user_name}@{server.ip}:{server.port}, "
        f"default path {path}",
    )
    return True


async def run_checks(settings: Settings, say: Say) -> bool:
    """Check the file server, every inbox and iSales; ``say`` each verdict in one line."""
    sftp_ok = await _check_source(settings, say)
    isales_ok = await _check_isales(settings, say)
    return sftp_ok and isales_ok
