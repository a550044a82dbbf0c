"""``isales-watcher fake-isales``: the emulator as a standalone server for staging."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import ssl
import sys
from datetime import timedelta
from typing import Any

from watcher.isales.emulator import Blacklist, Emulator, RegisteredServer
from watcher.isales.faults import Fault

__all__ = ("serve_emulator",)

_SERVER = re.compile(r"^(?P<id>[^=]+)=(?P<user>[^@]+)@(?P<host>[^:]+):(?P<port>\d+):(?P<path>/.*)$")
_UTC_OFFSET = re.compile(r"^(?P<sign>[+-])(?P<hours>\d\d):(?P<minutes>[0-5]\d)$")


def _servers(args: argparse.Namespace) -> list[RegisteredServer]:
    options: dict[str, Any] = {"known_hosts": str(args.known_hosts)}
    if args.sftp_key:
        options["client_keys"] = [str(args.sftp_key)]
    servers = []
    for text in args.server:
        match = _SERVER.match(text)
        if match is None:
            raise ValueError(f"--server {text!r}: expected ID=USER@HOST:PORT:/default/path")
        servers.append(
            RegisteredServer(
                match["id"],
                match["host"],
                int(match["port"]),
                match["user"],
                match["path"],
                dict(options),
            )
        )
    return servers


def _utc_offset(text: str) -> timedelta:
    match = _UTC_OFFSET.match(text)
    if match is None or int(match["hours"]) > 14:
        raise ValueError(f"--utc-offset {text!r}: expected +HH:MM or -HH:MM, e.g. +08:00")
    offset = timedelta(hours=int(match["hours"]), minutes=int(match["minutes"]))
    return -offset if match["sign"] == "-" else offset


def _blacklist(entries: list[str]) -> Blacklist | None:
    if not entries:
        return None  # the emulator's default: numbers ending in 0000
    return Blacklist(
        (e for e in entries if not e.startswith("*")),
        suffixes=(e[1:] for e in entries if e.startswith("*")),
    )


async def serve_emulator(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM."""
    emulator = Emulator(
        access_key=args.access_key,
        secret_key=args.secret_key_file.read_text().strip(),
        vdn_id=args.vdn,
        servers=_servers(args),
        campaigns=set(args.campaign),
        blacklist=_blacklist(args.blacklist),
        utc_offset=_utc_offset(args.utc_offset),
        naive_times=args.naive_times,
    )
    for text in args.fault:
        endpoint, _, fault = text.partition("=")
        try:
            emulator.faults.script(endpoint, Fault.parse(fault))
        except ValueError:
            raise ValueError(f"--fault {text!r}: unknown fault") from None
    if args.chaos:
        emulator.faults.chaos(args.chaos, args.seed)
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    host, _, port = args.listen.rpartition(":")
    url = await emulator.start(host, int(port), ssl_context=context)
    sys.stdout.write(f"fake iSales listening on {url} (VDN {args.vdn})\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emulator.close()
