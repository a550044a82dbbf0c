"""Claim: the ledger row first, then a rename into ``processing/<id>/`` that never overwrites."""

from __future__ import annotations

import contextlib
import posixpath

import structlog

from watcher.errors import (
    LedgerBusyError,
    SkipFileError,
    SourceRefusedError,
    TransientError,
    WatcherError,
)
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, RemoteEntry
from watcher.settings import RouteSettings
from watcher.sources import Source

__all__ = ("claim", "resolve_claim")

log = structlog.get_logger(__name__)


async def claim(
    source: Source, ledger: Ledger, route: RouteSettings, entry: RemoteEntry
) -> FileRecord | None:
    """Take a ready file out of the inbox. Returns ``None`` when another actor won the race.

    A row still in ``claiming`` is returned when the server failed mid-claim.

    Raises:
        SourceRefusedError: the server refused the move; the row is ``lost``, the file untouched.

    From here on the uploader cannot change or replace the bytes that iSales will read.
    """
    record = ledger.insert_claim(
        route=route.name, campaign_id=route.campaign_id, inbox=route.inbox_path, entry=entry
    )
    try:
        await source.makedirs(record.processing_dir)
        await source.rename(posixpath.join(route.inbox_path, entry.name), record.processing_path)
    except SourceRefusedError as exc:
        # The server answered no (a permission, a sticky folder, a link): nothing moved.
        with contextlib.suppress(WatcherError):
            await source.remove_dir(record.processing_dir)
        ledger.transition(
            record.id,
            FileState.lost,
            expect=FileState.claiming,
            reason=f"the claim was refused, the file stays in the inbox: {exc}",
        )
        raise
    except TransientError as exc:
        # Whether the rename happened is unknown: the row stays ``claiming`` for resolve_claim.
        log.warning("file.claim_interrupted", file_id=record.id, error=str(exc))
        return ledger.update(record.id, reason=str(exc))
    except SkipFileError as exc:
        await source.remove_dir(record.processing_dir)
        ledger.transition(record.id, FileState.lost, expect=FileState.claiming, reason=str(exc))
        log.info("file.claim_lost", file_id=record.id, file=entry.name, reason=str(exc))
        return None
    try:
        record = ledger.transition(record.id, FileState.claimed, expect=FileState.claiming)
    except LedgerBusyError:
        # Moved, but not yet written down: still ``claiming``, which resolve_claim settles by
        # looking in processing/ once the ledger is free.
        log.warning("file.claim_unrecorded", file_id=record.id, file=entry.name)
        return record
    log.info(
        "file.claimed",
        file_id=record.id,
        route=route.name,
        file=entry.name,
        size_bytes=entry.size_bytes,
    )
    return record


async def resolve_claim(source: Source, ledger: Ledger, record: FileRecord) -> FileRecord:
    """Decide a row left in ``claiming`` by a crash: did the rename happen or not?"""
    if await source.exists(record.processing_path):
        return ledger.transition(
            record.id,
            FileState.claimed,
            expect=FileState.claiming,
            reason="claim confirmed after restart",
        )
    await source.remove_dir(record.processing_dir)
    why = f" ({record.reason})" if record.reason else ""
    return ledger.transition(
        record.id,
        FileState.lost,
        expect=FileState.claiming,
        reason=f"the claim did not happen{why}; the inbox file is picked up afresh",
    )
