"""``isales-watcher ledger ...``: answer "what happened to my file?" and act on one, audited.

Every command opens the ledger for a few short transactions (WAL), so it works beside a running
daemon, which sees a change within one poll.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import io
import json
import os
import sqlite3
import sys
from typing import Any

from watcher.console import EX_INVALID, EX_OK, EX_SOFTWARE, fail_config
from watcher.console import fail as _fail
from watcher.console import say as _print
from watcher.errors import ConfigError, LedgerBusyError, LedgerError, WatcherError
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, escaped
from watcher.settings import Settings, load_settings
from watcher.settle import receipt_paths

__all__ = ("add_ledger_commands",)


_SHOWN_FIELDS = (
    "id",
    "state",
    "route",
    "campaign_id",
    "inbox",
    "name",
    "size_bytes",
    "sha256",
    "import_task_id",
    "outcome",
    "reason",
    "created_at",
    "updated_at",
    "submitted_at",
    "settled_path",
    "forgotten_at",
)


def _row(record: FileRecord) -> dict[str, Any]:
    return {key: getattr(record, key) for key in _SHOWN_FIELDS} | {"name": record.shown_name}


def _ledger_list(ledger: Ledger, args: argparse.Namespace) -> int:
    records = ledger.search(
        route=args.route,
        states=[FileState(s) for s in args.state or ()],
        since=args.since,
        until=args.until,
        name=args.name,
        limit=args.limit,
    )
    if args.json:
        _print(json.dumps([_row(r) for r in records], indent=2, ensure_ascii=False, default=str))
        return EX_OK
    for record in records:
        _print(
            f"{record.id}  {record.created_at[:19]}  {record.state.value:<10}  "
            f"{record.route:<16}  {record.shown_name}  {escaped(record.reason or '')}"
        )
    return EX_OK


def _ledger_show(ledger: Ledger, record: FileRecord) -> int:
    for key in _SHOWN_FIELDS:
        value = getattr(record, key)
        _print(f"{key:>15}: {escaped(str(value)) if isinstance(value, str) else value}")
    details = json.loads(record.details) if record.details else {}
    if record.settled_path:
        json_receipt, text_receipt = receipt_paths(record.settled_path)
        _print(f"{'receipts':>15}: {escaped(text_receipt)}, {escaped(json_receipt)}")
    if "import" in details:
        _print(f"{'import task':>15}: {json.dumps(details['import'], ensure_ascii=False)}")
    if "reconciliation" in details:
        found = json.dumps(details["reconciliation"], ensure_ascii=False, indent=2)
        _print(f"{'matched by':>15}: " + found.replace("\n", "\n" + " " * 17))
    if "validation" in details:
        problems = details["validation"].get("problems") or {}
        _print(f"{'validation':>15}: {details['validation'].get('data_rows')} rows, {problems}")
    _print("    transitions:")
    for step in ledger.transitions(record.id):
        _print(
            f"      {step['at']}  {step['from_state'] or '-'} -> {step['to_state']}"
            f"  ({escaped(step['actor'])}) {escaped(step['reason'] or '')}"
        )
    return EX_OK


def _ledger_export(ledger: Ledger, args: argparse.Namespace) -> int:
    """Every file version since a date, with its transitions: for an audit."""
    records = ledger.search(since=args.since, until=args.until, limit=10**9)
    rows = []
    for record in reversed(records):
        for step in ledger.transitions(record.id):
            rows.append(
                {
                    "file_id": record.id,
                    "route": record.route,
                    "campaign_id": record.campaign_id,
                    "name": record.shown_name,
                    "sha256": record.sha256,
                    "import_task_id": record.import_task_id,
                    "state_now": record.state.value,
                    "at": step["at"],
                    "from_state": step["from_state"],
                    "to_state": step["to_state"],
                    "actor": step["actor"],
                    "reason": step["reason"],
                }
            )
    if args.format == "json":
        _print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EX_OK
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["file_id"])
    writer.writeheader()
    writer.writerows({key: _inert(value) for key, value in row.items()} for row in rows)
    sys.stdout.write(out.getvalue())
    return EX_OK


def _inert(value: Any) -> Any:
    """A cell a spreadsheet shows as text: a dropped file named ``=HYPERLINK(...)`` (or a
    reason starting with ``+``, ``-``, ``@``) is not run as a formula when the audit is opened."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


async def _bring_back(settings: Settings, record: FileRecord) -> None:
    from watcher.settle import bring_back
    from watcher.sources import make_source

    source = make_source(settings)  # SFTP, or the local disk in sidecar mode
    try:
        await bring_back(source, record)
    finally:
        await source.close()


def _confirmed(ledger: Ledger, record: FileRecord, args: argparse.Namespace) -> bool:
    """On a terminal, show what was imported before and ask; elsewhere (scripts), go on."""
    if args.yes or not sys.stdin.isatty():
        return True
    details = json.loads(record.details) if record.details else {}
    twin = details.get("duplicate_of")
    if twin:
        _print(
            f"The same list was imported before as {escaped(str(twin.get('name')))} "
            f"(ledger {twin.get('ledger_id')}, import task {twin.get('import_task_id')}, "
            f"{twin.get('received_at')})."
        )
    _print(
        f"{record.id}: {record.shown_name}, {record.state.value}: {escaped(record.reason or '')}"
    )
    answer = input("Send it to iSales again? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _who(args: argparse.Namespace) -> str:
    """Who acts, for the audit trail: --by, or the person behind sudo, or the login name."""
    return str(args.by or os.environ.get("SUDO_USER") or getpass.getuser())


def _said(who: str, reason: str) -> tuple[str, str]:
    """Who and why as a terminal may show them (an operator's words are kept as given)."""
    return escaped(who), escaped(reason)


_HELD = (
    "the daemon leaves it alone until 'ledger unpark'; a running daemon drops its work on the "
    "file at its next step"
)


def _forgotten(ledger: Ledger, record: FileRecord, settings: Settings, by: str, why: str) -> str:
    """What forgetting a file did: the list may be imported again, unless another file of the
    same list still counts as imported (a duplicate's original, say)."""
    route = settings.route(record.route, record.campaign_id)
    twin = ledger.still_imported(record, route.duplicates if route else "rows")
    if twin is None:
        return (
            f"{record.id} is forgotten (by {by}: {why}); the same list may be imported again. "
            "Its history and receipts stay."
        )
    return (
        f"{record.id} is forgotten (by {by}: {why}), but the same list still counts as imported "
        f"as {twin.shown_name} ({twin.id}): forget that file too for it to be imported again"
    )


def _ledger_hold(
    ledger: Ledger, record: FileRecord, settings: Settings, args: argparse.Namespace
) -> int:
    """park, unpark, forget: one audited ledger write each, nothing else."""
    who, command = _who(args), args.ledger_command
    act = {"park": ledger.park, "unpark": ledger.unpark, "forget": ledger.forget}[command]
    try:
        record = act(record.id, actor=who, reason=args.reason)
    except LedgerBusyError:
        raise  # not the file's fault: said once, below
    except WatcherError as exc:
        return _fail(f"cannot {command} {record.id}: {exc}", EX_INVALID)
    by, why = _said(who, args.reason)
    if command == "park":
        _print(f"{record.id} is parked (by {by}: {why}); {_HELD}")
    elif command == "unpark":
        _print(
            f"{record.id} is {record.state.value} again (by {by}); a running daemon carries it "
            "on within one poll"
        )
    else:
        _print(_forgotten(ledger, record, settings, by, why))
    return EX_OK


def _ledger_reprocess(
    ledger: Ledger, record: FileRecord, settings: Settings, args: argparse.Namespace
) -> int:
    who = _who(args)
    if not _confirmed(ledger, record, args):
        return _fail("nothing done", EX_INVALID)
    try:
        if record.state is FileState.rejected:
            asyncio.run(_bring_back(settings, record))
        record = ledger.reprocess(record.id, actor=who, reason=args.reason)
    except LedgerBusyError:
        raise  # not the file's fault: said once, below
    except WatcherError as exc:
        return _fail(f"cannot reprocess {record.id}: {exc}", EX_INVALID)
    by, why = _said(who, args.reason)
    _print(
        f"{record.id} will be sent to iSales again (by {by}: {why}); "
        "a running daemon picks it up within one poll"
    )
    return EX_OK


def _ledger_resolve(
    ledger: Ledger, record: FileRecord, settings: Settings, args: argparse.Namespace
) -> int:
    from watcher.resolve import resolve_imported

    who = _who(args)
    by, why = _said(who, args.reason)
    try:
        if args.imported:
            record = asyncio.run(
                resolve_imported(
                    settings, ledger, record, args.imported, actor=who, reason=args.reason
                )
            )
            _print(
                f"{record.id} is now tracked as import task {escaped(args.imported)} (by {by}); "
                "a running daemon follows it to its end and settles the file within one poll"
            )
        else:
            record = ledger.resolve(record.id, task_id=None, actor=who, reason=args.reason)
            _print(
                f"{record.id} was not imported (by {by}: {why}); a running daemon sends "
                "it once more within one poll"
            )
    except LedgerBusyError:
        raise  # not the file's fault: said once, below
    except WatcherError as exc:
        return _fail(f"cannot resolve {record.id}: {exc}", EX_INVALID)
    return EX_OK


def _act_on_one(ledger: Ledger, settings: Settings, args: argparse.Namespace) -> int:
    found = ledger.lookup(args.id)
    if not found:
        return _fail(
            f"no ledger row matches {args.id!r} (an id, a file name or a SHA-256)", EX_INVALID
        )
    if args.ledger_command == "show":
        for record in found:  # a name may have several versions: each, oldest first
            _ledger_show(ledger, record)
        return EX_OK
    if len(found) != 1:
        ids = ", ".join(r.id for r in found[:10])
        return _fail(f"{len(found)} ledger rows match {args.id!r} ({ids}): give the id", EX_INVALID)
    if args.ledger_command == "reprocess":
        return _ledger_reprocess(ledger, found[0], settings, args)
    if args.ledger_command == "resolve":
        return _ledger_resolve(ledger, found[0], settings, args)
    return _ledger_hold(ledger, found[0], settings, args)


def _ledger(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return fail_config(exc)
    try:
        ledger = Ledger(settings.daemon.state_dir / "ledger.sqlite3")
        try:
            if args.ledger_command == "list":
                return _ledger_list(ledger, args)
            if args.ledger_command == "export":
                return _ledger_export(ledger, args)
            return _act_on_one(ledger, settings, args)
        finally:
            ledger.close()
    except LedgerBusyError as exc:
        return _fail(str(exc), EX_SOFTWARE)
    except LedgerError as exc:
        return _fail(f"ledger error: {exc}; check daemon.state_dir", EX_SOFTWARE)
    except sqlite3.OperationalError as exc:
        # A ledger locked for longer than the busy timeout, or a disk that refuses it.
        return _fail(
            f"the ledger cannot be used right now ({exc}); try again in a moment", EX_SOFTWARE
        )


def add_ledger_commands(commands: Any, config: argparse.ArgumentParser) -> None:
    """The ``ledger`` sub-commands, on the command line's sub-parsers."""
    codes = (
        "Exit codes: 0 done, 1 no such file or refused (the line says why), 70 the ledger cannot "
        "be used, 78 a configuration error."
    )
    ledger = commands.add_parser(
        "ledger",
        parents=[config],
        help="inspect and act on the ledger",
        description="Answer what happened to a file, and act on one (audited: who, when, why). "
        f"Example: isales-watcher ledger list --state uncertain --config FILE. {codes}",
    )
    sub = ledger.add_subparsers(dest="ledger_command", required=True)
    listing = sub.add_parser(
        "list",
        parents=[config],
        help="the newest files, filtered",
        description="List the newest files, newest first: id, received, state, route, name, "
        "reason. Example: isales-watcher ledger list --state rejected --since 2025-03-01 "
        f"--config FILE. {codes}",
    )
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in FileState],
        help="only files in this state (repeatable; say, uncertain)",
    )
    listing.add_argument("--route", help="only this route")
    listing.add_argument("--since", help="received at or after (ISO date or time, UTC)")
    listing.add_argument("--until", help="received before (ISO date or time, UTC)")
    listing.add_argument("--name", help="file names matching this pattern (say, '*march*')")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = sub.add_parser(
        "show",
        parents=[config],
        help="one file's whole history",
        description="Show a file's row, its receipts, its import task and every transition. "
        "Example: isales-watcher ledger show 'march calls.xlsx' --config FILE. " + codes,
    )
    show.add_argument("id", help="a ledger id or its beginning, a file name, or a SHA-256")
    export = sub.add_parser(
        "export",
        parents=[config],
        help="every file version and transition, for an audit",
        description="Write every file version received in a period and each of its "
        "transitions, as CSV or JSON, for an audit. Example: isales-watcher ledger export "
        f"--since 2025-01-01 --format csv --config FILE > audit.csv. {codes}",
    )
    export.add_argument("--since", required=True, help="received at or after (ISO date, UTC)")
    export.add_argument("--until", help="received before (ISO date, UTC)")
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    reprocess = sub.add_parser(
        "reprocess",
        parents=[config],
        help="send a file parked as uncertain, or rejected (say, as a duplicate), again (audited)",
        description="Send a file parked as uncertain, or rejected (say, as a duplicate), to "
        "iSales again; a rejected file is moved back into processing/ first. A running daemon "
        "picks it up within one poll. Example: isales-watcher ledger reprocess 3f2a9c "
        f"--reason 'the campaign was emptied' --config FILE. {codes}",
    )
    reprocess.add_argument("id", help="a ledger id or its beginning")
    reprocess.add_argument("--reason", required=True, help="why (kept in the ledger)")
    reprocess.add_argument("--by", help="who asks (default: the login name)")
    reprocess.add_argument("--yes", action="store_true", help="do not ask on a terminal")
    resolve = sub.add_parser(
        "resolve",
        parents=[config],
        help="settle an uncertain file from what iSales shows: --imported TASK_ID or "
        "--not-imported (audited)",
        description="Settle a file parked as uncertain from what the iSales console shows: "
        "--imported TASK_ID (it was imported as that task: track it) or --not-imported (send "
        "it once more). Example: isales-watcher ledger resolve 3f2a9c --imported 1700000123 "
        f"--reason 'seen in the console' --config FILE. {codes}",
    )
    resolve.add_argument("id", help="a ledger id or its beginning")
    verdict = resolve.add_mutually_exclusive_group(required=True)
    verdict.add_argument(
        "--imported", metavar="TASK_ID", help="iSales imported it as this task: track it"
    )
    verdict.add_argument(
        "--not-imported", action="store_true", help="iSales did not import it: send it once more"
    )
    resolve.add_argument("--reason", required=True, help="what you saw (kept in the ledger)")
    resolve.add_argument("--by", help="who decides (default: the login name)")
    _add_hold_commands(sub, config)
    ledger.set_defaults(handler=_ledger)


def _add_hold_commands(sub: Any, config: argparse.ArgumentParser) -> None:
    park = sub.add_parser(
        "park",
        parents=[config],
        help="hold a file: the daemon leaves it alone until unpark (audited)",
        description="Hold a file; the daemon leaves it alone until 'ledger unpark'. Allowed "
        "for a file that is claimed (nothing was sent), tracking (iSales has its import; "
        "nothing will be sent again) or uncertain (parked for an operator already; this "
        "stops its automatic rechecks). Refused while it is submitting (its upload may be "
        "under way: it is reconciled, never parked), claiming or settling (finished in a "
        "moment), and once it is settled. Example: isales-watcher ledger park 20261123-1325 "
        '--reason "campaign paused". Exit codes: 0 parked, 1 refused, 70 the ledger is busy.',
    )
    unpark = sub.add_parser(
        "unpark",
        parents=[config],
        help="give a parked file back to the daemon, where it was (audited)",
        description="Give a parked file back to the daemon, in the state it was parked from; "
        "a running daemon carries it on within one poll. Example: isales-watcher ledger "
        "unpark 20261123-1325 --config FILE. Exit codes: 0 done, 1 not parked, 70 the ledger "
        "is busy.",
    )
    forget = sub.add_parser(
        "forget",
        parents=[config],
        help="let a settled file's list be imported again (audited)",
        description="Forget a settled (done or rejected) file: the same list dropped again is "
        "imported instead of rejected as a duplicate. Its row, history and receipts stay. "
        'Example: isales-watcher ledger forget 20261123-1325 --reason "campaign reset". '
        "Exit codes: 0 forgotten, 1 refused, 70 the ledger is busy.",
    )
    for command, required in ((park, True), (unpark, False), (forget, True)):
        command.add_argument("id", help="a ledger id or its beginning, a file name, or a SHA-256")
        command.add_argument(
            "--reason",
            required=required,
            default=None if required else "by hand",
            help="why (kept in the ledger)",
        )
        command.add_argument("--by", help="who acts (default: the login name)")
