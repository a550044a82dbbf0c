"""The command line: parse, wire and report. The work lives in the other modules."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watcher import __version__
from watcher.config_commands import add_config_commands
from watcher.console import (
    EX_CANTCREAT,
    EX_INVALID,
    EX_OK,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    EX_USAGE,
    fail_config,
    warn,
)
from watcher.console import fail as _fail
from watcher.console import say as _print
from watcher.daemon import Daemon
from watcher.errors import ConfigError, LedgerError, WatcherError
from watcher.file_commands import add_file_commands, seconds
from watcher.isales.faults import ENDPOINTS, fault_forms
from watcher.ledger_commands import add_ledger_commands
from watcher.logs import configure_logging
from watcher.settings import DEFAULT_CONFIG, load_settings

__all__ = ("main", "serve")


async def serve(daemon: Daemon) -> None:
    """Run a daemon with signal handling: the first SIGTERM/SIGINT drains, the second forces."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_signal() -> None:
        if daemon.stop.is_set():
            main_task.cancel()  # a second signal: stop waiting for in-flight steps
        daemon.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _run(args: argparse.Namespace) -> int:
    configure_logging()
    try:
        settings = load_settings(args.config, warn=warn)
        asyncio.run(serve(Daemon(settings, config_path=args.config)))
    except ConfigError as exc:
        return fail_config(exc)
    except LedgerError as exc:
        return _fail(f"ledger error: {exc}", EX_SOFTWARE)
    except asyncio.CancelledError:
        return _fail("stopped before the drain finished (second signal)", EX_SOFTWARE)
    return EX_OK


def _check(args: argparse.Namespace) -> int:
    import stamina

    from watcher.check import briefly, run_checks

    # The check's own lines say everything: no log lines between them, and no retries (each
    # retry would log, and a person waits for the verdict).
    configure_logging(level=logging.CRITICAL)
    logging.disable(logging.CRITICAL)
    stamina.set_active(False)
    try:
        settings = load_settings(args.config, warn=warn)
    except ConfigError as exc:
        return fail_config(exc)
    _print(f"ok    configuration {args.config}")

    def say(ok: bool, text: str) -> None:
        _print(f"{'ok  ' if ok else 'FAIL'}  {text}")

    healthy = asyncio.run(run_checks(briefly(settings, args.timeout), say))
    return EX_OK if healthy else EX_INVALID


def _servers(args: argparse.Namespace) -> int:
    from watcher.check import list_servers

    configure_logging(level=logging.WARNING)
    try:
        settings = load_settings(args.config)
        servers = asyncio.run(list_servers(settings))
    except ConfigError as exc:
        return fail_config(exc)
    except WatcherError as exc:
        return _fail(str(exc), EX_INVALID)
    _print(f"{'serverId':<24} {'user@ip:port':<36} default path")
    for server in servers:
        where = f"{server.user_name}@{server.ip}:{server.port}"
        _print(f"{server.server_id:<24} {where:<36} {server.file_path}")
    return EX_OK


def _fake_isales(args: argparse.Namespace) -> int:
    from watcher.isales.staging import ListenError, serve_emulator

    configure_logging()
    try:
        asyncio.run(serve_emulator(args))
    except ValueError as exc:
        return _fail(str(exc), EX_USAGE)
    except ListenError as exc:
        return _fail(str(exc), EX_UNAVAILABLE)
    except KeyboardInterrupt:
        pass
    return EX_OK


def _probe(args: argparse.Namespace) -> int:
    from watcher.probe import ProbeError, control_address, probe

    try:
        address = control_address(args.config)
        reasons = probe(address, args.which, args.timeout)
    except ProbeError as exc:
        # Exit 1 for every no: a container engine reads 1 as unhealthy (2 is reserved).
        return _fail(f"{args.which}: NO: {exc}", EX_INVALID)
    _print(f"{args.which}: ok{f' ({reasons})' if reasons else ''}")
    return EX_OK


def _demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo

    folder: Path = args.dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:
        return _fail(f"cannot keep the demo's files in {folder}: {exc.strerror}", EX_CANTCREAT)
    configure_logging(json=False)
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run_demo(folder, once=args.once, keep=args.keep))
    return EX_OK


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's layout, but a command line in a description is never cut at its hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )


class _Parser(argparse.ArgumentParser):
    """Every command's parser (sub-parsers take their parent's class): one help layout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="isales-watcher",
        description="Import outbound-call lists dropped on an SFTP server into CC-iSales, once.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    config = _Parser(add_help=False)
    config.add_argument(
        "--config",
        type=Path,
        # Accepted before or after a sub-command: no level's default may overwrite another's
        # value, so the default is filled in after parsing.
        default=argparse.SUPPRESS,
        help=f"the TOML configuration (default {DEFAULT_CONFIG})",
    )

    run = commands.add_parser(
        "run",
        parents=[config],
        help="run the daemon",
        description="Watch every route's inbox and import what lands there, until SIGTERM or "
        "Ctrl-C (a second one stops without waiting). Example: isales-watcher run --config "
        "/etc/isales-watcher/config.toml. Exit codes: 0 stopped, 70 the ledger failed, 78 a "
        "configuration error (named).",
    )
    run.set_defaults(handler=_run)

    add_file_commands(commands)
    add_ledger_commands(commands, config)
    add_config_commands(commands, config)

    check = commands.add_parser(
        "check",
        parents=[config],
        help="check the configuration, SFTP login and host key, inboxes, iSales signature",
        description="Check the configuration, then ask each outside thing once, without "
        "retries: the SFTP login and host key, the right to move files in each inbox, iSales' "
        "acceptance of the signature and the file server's serverId. One ok or FAIL line each. "
        "Example: isales-watcher check --config /etc/isales-watcher/config.toml. Exit codes: "
        "0 all ok, 1 something failed (its FAIL line says what), 78 a configuration error.",
    )
    check.add_argument(
        "--timeout",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for each answer (default 5)",
    )
    check.set_defaults(handler=_check)
    servers = commands.add_parser(
        "servers",
        parents=[config],
        help="list the file servers registered in iSales",
        description="List the SFTP file servers registered in iSales for the configured VDN, to "
        "find isales.server_id. Example: isales-watcher servers --config "
        "/etc/isales-watcher/config.toml. Exit codes: 0 listed, 1 iSales could not be asked "
        "(the line says why), 78 a configuration error.",
    )
    servers.set_defaults(handler=_servers)

    fake = commands.add_parser(
        "fake-isales",
        help="run the iSales emulator alone, with faults on demand (staging)",
        description="Serve the iSales emulator (queryServer, uploadFileServer, "
        "queryDataImportTask) for a staging bench: it checks signatures and fetches each "
        "uploaded file over SFTP as iSales does, with faults scripted call by call. Example: "
        "isales-watcher fake-isales --access-key AK --secret-key-file sk --known-hosts "
        "known_hosts --server fs-1=isales@10.0.0.7:22:/home/sftp --sftp-key id_ed25519 "
        "--campaign 1001 --fault upload=503. Exit codes: 0 stopped (SIGTERM, Ctrl-C), 64 a bad "
        "option (named), 69 cannot listen on --listen.",
    )
    fake.add_argument("--listen", default="127.0.0.1:28080", help="host:port")
    fake.add_argument("--vdn", type=int, default=1)
    fake.add_argument("--access-key", required=True)
    fake.add_argument("--secret-key-file", type=Path, required=True)
    fake.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="ID=USER@HOST:PORT:PATH",
        help="a registered SFTP file server (repeatable)",
    )
    fake.add_argument("--sftp-key", type=Path, help="private key the emulator fetches files with")
    fake.add_argument(
        "--known-hosts",
        type=Path,
        required=True,
        help="host keys of the file servers (fetches verify them)",
    )
    fake.add_argument(
        "--campaign",
        action="append",
        required=True,
        metavar="ID",
        help="a campaign that exists (repeatable, at least one; others are answered 0200007)",
    )
    fake.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ENDPOINT=FAULT",
        help=f"script a fault for the next call of ENDPOINT ({'|'.join(ENDPOINTS)}); "
        f"repeatable, used in order. FAULT is one of: {', '.join(fault_forms())}",
    )
    fake.add_argument(
        "--blacklist",
        action="append",
        default=[],
        metavar="NUMBER|*SUFFIX",
        help="a blacklisted called number, or *SUFFIX for all numbers ending so "
        "(repeatable; default *0000)",
    )
    fake.add_argument(
        "--utc-offset",
        default="+00:00",
        metavar="+HH:MM",
        help="the server's time zone (default +00:00)",
    )
    fake.add_argument(
        "--naive-times",
        action="store_true",
        help="write beginTime/endTime in the server's local time without an offset",
    )
    fake.add_argument("--chaos", type=float, default=0.0, help="probability of a random fault")
    fake.add_argument("--seed", type=int, default=1)
    fake.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain")
    fake.add_argument("--tls-key", type=Path)
    fake.set_defaults(handler=_fake_isales)

    probe = commands.add_parser(
        "probe",
        parents=[config],
        help="ask the running daemon's control port whether it is live or ready (exit 0 or 1)",
        description="Ask the running daemon's control port (daemon.control_listen) whether it "
        "is live (/healthz) or ready (/readyz), for a container HEALTHCHECK or a Kubernetes "
        "exec probe. Example: isales-watcher probe ready --config "
        "/etc/isales-watcher/config.toml. Exit codes: 0 yes, 1 no (the line says why, also "
        "when the daemon cannot be asked).",
    )
    probe.add_argument("which", choices=["live", "ready"])
    probe.add_argument(
        "--timeout", type=seconds, default=5.0, metavar="SECONDS", help="seconds (default 5)"
    )
    probe.set_defaults(handler=_probe)

    demo = commands.add_parser(
        "demo",
        help="everything embedded: SFTP server, iSales emulator, daemon",
        description="Start an SFTP server, the iSales emulator and the daemon in one process, "
        "drop a valid and an invalid sample, and keep running: drop your own .xlsx files into "
        "the printed folder and watch them land in done/ or rejected/ with a receipt. Each run "
        "starts clean unless --keep. Example: isales-watcher demo --dir /tmp/demo. Exit codes: "
        "0 stopped (Ctrl-C, or --once done), 73 the folder cannot be written.",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("demo-data"),
        help="where the demo keeps its files (default ./demo-data)",
    )
    demo.add_argument(
        "--once", action="store_true", help="exit once the two sample files are settled"
    )
    demo.add_argument(
        "--keep", action="store_true", help="keep the ledger and files of the previous run"
    )
    demo.set_defaults(handler=_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``isales-watcher`` command."""
    args = _parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = DEFAULT_CONFIG
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be answered
    except BrokenPipeError:
        # `ledger list | head`: the reader has all it wanted; end quietly, as cat does.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for cat
    return code
