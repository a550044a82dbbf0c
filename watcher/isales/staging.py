"""``isales-watcher fake-isales``: the emulator as a standalone server for staging."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import ssl
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from watcher.isales.emulator import Blacklist, Emulator, RegisteredServer
from watcher.isales.faults import ENDPOINTS, Fault
from watcher.settings import check_readable

__all__ = ("ListenError", "serve_emulator")

_SERVER = re.compile(r"^(?P<id>[^=]+)=(?P<user>[^@]+)@(?P<host>[^:]+):(?P<port>\d+):(?P<path>/.*)$")
_UTC_OFFSET = re.compile(r"^(?P<sign>[+-])(?P<hours>\d\d):(?P<minutes>[0-5]\d)$")
_LISTEN = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(?P<port>\d{1,5})$")


class ListenError(Exception):
    """The emulator cannot serve on the address it was given."""


def _secret_key(path: Path) -> str:
    check_readable("--secret-key-file", path)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--secret-key-file {path}: cannot read it ({exc})") from None
    if not secret:
        raise ValueError(f"--secret-key-file {path}: the file is empty")
    return secret


def _listen(text: str) -> tuple[str, int]:
    match = _LISTEN.match(text)
    if match is None or not 0 <= int(match["port"]) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:28080")
    return match["host"].strip("[]"), int(match["port"])


def _faults(texts: list[str]) -> list[tuple[str, Fault]]:
    faults = []
    for text in texts:
        endpoint, _, fault = text.partition("=")
        if endpoint not in ENDPOINTS or not fault:
            raise ValueError(
                f"--fault {text!r}: expected ENDPOINT=FAULT, ENDPOINT one of {'|'.join(ENDPOINTS)}"
            )
        try:
            faults.append((endpoint, Fault.parse(fault)))
        except ValueError as exc:
            raise ValueError(f"--fault {text!r}: {exc}") from None
    return faults


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None:
        if args.tls_key is not None:
            raise ValueError("--tls-key goes with --tls-cert")
        return None
    check_readable("--tls-cert", args.tls_cert)
    check_readable("--tls-key", args.tls_key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-cert/--tls-key: cannot load the certificate: {exc}") from None
    return context


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
    """Serve until SIGINT or SIGTERM.

    Raises:
        ValueError: an option is wrong; the message names it.
        ListenError: the address cannot be served on.
    """
    check_readable("--known-hosts", args.known_hosts)
    check_readable("--sftp-key", args.sftp_key)
    host, port = _listen(args.listen)
    faults = _faults(args.fault)
    if not 0 <= args.chaos <= 1:
        raise ValueError(f"--chaos {args.chaos:g}: a probability, from 0 to 1")
    context = _tls(args)
    emulator = Emulator(
        access_key=args.access_key,
        secret_key=_secret_key(args.secret_key_file),
        vdn_id=args.vdn,
        servers=_servers(args),
        campaigns=set(args.campaign),
        blacklist=_blacklist(args.blacklist),
        utc_offset=_utc_offset(args.utc_offset),
        naive_times=args.naive_times,
    )
    for endpoint, fault in faults:
        emulator.faults.script(endpoint, fault)
    if args.chaos:
        emulator.faults.chaos(args.chaos, args.seed)
    try:
        url = await emulator.start(host, port, ssl_context=context)
    except OSError as exc:
        await emulator.close()
        raise ListenError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    sys.stdout.write(f"fake iSales listening on {url} (VDN {args.vdn})\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emulator.close()
