"""The command line: parse, wire and report. The work lives in the other modules."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from watcher import __version__
from watcher.console import EX_CONFIG, EX_INVALID, EX_OK, EX_SOFTWARE, EX_UNREADABLE
from watcher.console import fail as _fail
from watcher.console import say as _print
from watcher.daemon import Daemon
from watcher.errors import CheckerUnavailableError, ConfigError, LedgerError, WatcherError
from watcher.ledger_commands import add_ledger_commands
from watcher.logs import configure_logging
from watcher.models import escaped
from watcher.settings import DEFAULT_CONFIG, ValidationSettings, load_settings
from watcher.validate import KINDS, Report, ValidationOptions
from watcher.validate.pool import CheckLimits, ValidationPool

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
        settings = load_settings(args.config)
        asyncio.run(serve(Daemon(settings, config_path=args.config)))
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", EX_CONFIG)
    except LedgerError as exc:
        return _fail(f"ledger error: {exc}", EX_SOFTWARE)
    except asyncio.CancelledError:
        return _fail("stopped before the drain finished (second signal)", EX_SOFTWARE)
    return EX_OK


def _place(row: int | None, column: str | None) -> str:
    if row is None:
        return "the file" if column is None else f"column {column}"
    return f"row {row}" + (f", column {column}" if column else "")


def _describe(report: Report, name: str) -> list[str]:
    if report.is_valid:
        lines = [f"{name}: valid, {report.data_rows} data rows"]
    else:
        lines = [f"{name}: INVALID, {report.error_count} problems in {report.data_rows} data rows"]
    for kind, count in sorted(report.counts.items()):
        lines.append(f"  {KINDS[kind].title}: {count}")
        examples = [p for p in report.examples if p.kind == kind]
        lines.extend(
            f"    {_place(p.row, p.column)}: {p.message}" for p in examples[:_EXAMPLES_PER_KIND]
        )
        if count > _EXAMPLES_PER_KIND:
            lines.append(
                f"    ... {count - _EXAMPLES_PER_KIND} more (--json lists up to 20 of each)"
            )
        lines.append(f"    fix: {KINDS[kind].advice}")
    return lines


class _Ticker:
    """A one-line "checking NAME... N s" on the terminal for files that make a person wait."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._task: asyncio.Task[None] | None = None
        self._width = 0

    async def __aenter__(self) -> _Ticker:
        self._task = asyncio.create_task(self._tick())
        return self

    async def _tick(self) -> None:
        await asyncio.sleep(1)
        started = asyncio.get_running_loop().time() - 1
        while True:
            line = f"\rchecking {self.label}... {asyncio.get_running_loop().time() - started:.0f} s"
            self._width = len(line)
            sys.stderr.write(line)
            sys.stderr.flush()
            await asyncio.sleep(1)

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()


_EXAMPLES_PER_KIND = 10


async def _check_files(paths: Sequence[Path], limits: CheckLimits) -> list[Report]:
    """Each file in a checker of its own, under the daemon's limits: a hostile file ends too."""
    pool = ValidationPool(1, limits, start="fork")
    reports = []
    try:
        for path in paths:
            ticker = _Ticker(escaped(path.name)) if sys.stderr.isatty() else None
            async with ticker or contextlib.nullcontext():
                reports.append(await pool.validate(str(path), ValidationOptions()))
    finally:
        pool.shutdown()
    return reports


def _validate(args: argparse.Namespace) -> int:
    worst = EX_OK
    results = []
    limits = CheckLimits(args.max_seconds, args.max_memory_mb)
    files = []
    for path in args.files:  # a wrong path is the user's typo, not a broken workbook
        if path.is_file():
            files.append(path)
            continue
        worst = EX_UNREADABLE
        _fail(f"{path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}", 0)
    try:
        reports = asyncio.run(_check_files(files, limits))
    except CheckerUnavailableError as exc:
        return _fail(str(exc), EX_SOFTWARE)
    for path, report in zip(files, reports, strict=True):
        if report.is_unreadable:
            worst = max(worst, EX_UNREADABLE)
        elif not report.is_valid:
            worst = max(worst, EX_INVALID)
        if args.json:
            results.append({"file": str(path), **report.as_json()})
        else:
            for line in _describe(report, str(path)):
                _print(line)
    if args.json:
        _print(json.dumps(results, indent=2, ensure_ascii=False))
    return worst


def _check(args: argparse.Namespace) -> int:
    from watcher.check import run_checks

    configure_logging(level=logging.WARNING)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", EX_CONFIG)
    _print(f"ok    configuration {args.config}")

    def say(ok: bool, text: str) -> None:
        _print(f"{'ok  ' if ok else 'FAIL'}  {text}")

    return EX_OK if asyncio.run(run_checks(settings, say)) else EX_INVALID


def _servers(args: argparse.Namespace) -> int:
    from watcher.check import list_servers

    configure_logging(level=logging.WARNING)
    try:
        settings = load_settings(args.config)
        servers = asyncio.run(list_servers(settings))
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", EX_CONFIG)
    except WatcherError as exc:
        return _fail(str(exc), EX_INVALID)
    _print(f"{'serverId':<24} {'user@ip:port':<36} default path")
    for server in servers:
        where = f"{server.user_name}@{server.ip}:{server.port}"
        _print(f"{server.server_id:<24} {where:<36} {server.file_path}")
    return EX_OK


def _fake_isales(args: argparse.Namespace) -> int:
    from watcher.isales.staging import serve_emulator

    configure_logging()
    try:
        asyncio.run(serve_emulator(args))
    except ValueError as exc:
        return _fail(str(exc), EX_CONFIG)
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

    configure_logging(json=False)
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run_demo(args.dir, once=args.once, keep=args.keep))
    return EX_OK


def _template(args: argparse.Namespace) -> int:
    from xlsxwriter.exceptions import FileCreateError

    from watcher.samples import write_template

    out: Path = args.out
    if out.suffix.lower() != ".xlsx":
        return _fail(f"{out}: the template is an .xlsx workbook; give a name ending in .xlsx", 64)
    if out.exists() and not args.force:
        return _fail(f"{out} exists already; add --force to overwrite it", 73)
    if not out.parent.is_dir():
        return _fail(f"cannot write {out}: the folder {out.parent} does not exist", 73)
    try:
        write_template(out)
    except (OSError, FileCreateError) as exc:
        return _fail(f"cannot write {out}: {exc}", 73)
    _print(f"wrote {out}")
    return EX_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isales-watcher",
        description="Import outbound-call lists dropped on an SFTP server into CC-iSales, once.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    config = argparse.ArgumentParser(add_help=False)
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

    validate = commands.add_parser(
        "validate",
        help="check .xlsx files offline, as the daemon would",
        description="Check outbound-call lists against the iSales template, each in a checker "
        "of its own under the daemon's limits. Example: isales-watcher validate march.xlsx. "
        "Exit codes: 0 all valid, 1 a file has problems, 2 a file cannot be read (or is "
        "missing), 70 no checker could be started.",
    )
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    defaults = ValidationSettings()
    validate.add_argument(
        "--max-seconds",
        type=float,
        default=defaults.max_seconds,
        help=f"give up on a file after this long (default {defaults.max_seconds:g})",
    )
    validate.add_argument(
        "--max-memory-mb",
        type=int,
        default=defaults.max_memory_mb,
        help=f"memory ceiling of the checker (default {defaults.max_memory_mb})",
    )
    validate.set_defaults(handler=_validate)

    add_ledger_commands(commands, config)

    check = commands.add_parser(
        "check",
        parents=[config],
        help="check the configuration, SFTP login and host key, inboxes, iSales signature",
    )
    check.set_defaults(handler=_check)
    servers = commands.add_parser(
        "servers", parents=[config], help="list the file servers registered in iSales"
    )
    servers.set_defaults(handler=_servers)

    fake = commands.add_parser(
        "fake-isales", help="run the iSales emulator alone, with faults on demand (staging)"
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
        help="script a fault: upload|query_tasks|query_server|*=503, 429:2, delay:5, "
        "drop_after_accept, accept_then_502|503|504, accept_then_status:504, fail_import:MSG, "
        "slow_import:60, skew:300, broken_body, redirect, redirect:/elsewhere, reject_4xx, "
        "null_server, string_list, bad_count, bad_begin_time",
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
    )
    probe.add_argument("which", choices=["live", "ready"])
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    probe.set_defaults(handler=_probe)

    demo = commands.add_parser(
        "demo", help="everything embedded: SFTP server, iSales emulator, daemon"
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

    template = commands.add_parser(
        "template",
        help="write an empty template with an example row",
        description="Write the outbound-call template (.xlsx) with one example row. "
        "Example: isales-watcher template calls.xlsx. Exit codes: 0 written, 64 not an .xlsx "
        "name, 73 exists already (use --force) or cannot be written.",
    )
    template.add_argument("out", type=Path)
    template.add_argument("--force", action="store_true", help="overwrite an existing file")
    template.set_defaults(handler=_template)
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
