"""Submit: ``uploadFileServer`` at most once per (campaign, content), and reconciliation."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import structlog

from watcher.errors import (
    ApiAmbiguousError,
    ApiRejectedError,
    ApiTrustError,
    ApiUnavailableError,
    SignatureRefusedError,
)
from watcher.isales.client import IsalesClient
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, ImportTask, Outcome
from watcher.settings import RouteSettings

__all__ = ("reconcile", "reject_duplicate", "submit", "with_details")

log = structlog.get_logger(__name__)

_RECONCILE_PAGES = 10
_WINDOW_SLACK = timedelta(minutes=2)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def with_details(record: FileRecord, **extra: object) -> str:
    details = json.loads(record.details) if record.details else {}
    details.update(extra)
    return json.dumps(details, ensure_ascii=False)


def reject_duplicate(ledger: Ledger, record: FileRecord, twin: FileRecord) -> FileRecord:
    """Settle a claimed file as a duplicate of ``twin``, which reached iSales before it."""
    return ledger.transition(
        record.id,
        FileState.settling,
        expect=FileState.claimed,
        outcome=Outcome.rejected,
        reason=f"duplicate: the same content was already imported as {twin.name}",
        details=_duplicate_details(record, twin),
    )


def _duplicate_details(record: FileRecord, twin: FileRecord) -> str:
    return with_details(
        record,
        duplicate_of={
            "ledger_id": twin.id,
            "name": twin.name,
            "import_task_id": twin.import_task_id,
            "received_at": twin.created_at,
            "state": twin.state.value,
        },
    )


async def submit(
    client: IsalesClient,
    ledger: Ledger,
    record: FileRecord,
    *,
    route: RouteSettings,
    server_id: str,
    file_path: str,
    reconcile_grace_s: float,
    poll_s: float,
) -> FileRecord:
    """Send a validated, claimed file to iSales.

    The ``submitting`` row is durable before the POST. A refused or provably-unsent request goes
    back to ``claimed`` (the caller retries later); an unknown outcome is reconciled, never re-sent.

    Raises:
        ApiUnavailableError, SignatureRefusedError: nothing was sent; the row is ``claimed`` again.
    """
    begun = ledger.begin_submit(record.id)
    if begun.id != record.id:
        return reject_duplicate(ledger, record, begun)
    record = begun
    log.info("file.submitting", file_id=record.id, campaign_id=record.campaign_id)
    try:
        task_id = await client.upload(
            route.campaign_id,
            server_id=server_id,
            file_path=file_path,
            file_name=record.name,
            hour_minute=route.hour_minute,
        )
    except ApiRejectedError as exc:
        return ledger.transition(
            record.id,
            FileState.settling,
            expect=FileState.submitting,
            outcome=Outcome.rejected,
            reason=f"iSales refused the import: {exc}",
        )
    except ApiAmbiguousError as exc:
        log.warning("file.submit_ambiguous", file_id=record.id, error=str(exc))
        return await reconcile(
            client, ledger, record, cause=str(exc), grace_s=reconcile_grace_s, poll_s=poll_s
        )
    except (ApiUnavailableError, SignatureRefusedError, ApiTrustError) as exc:
        # Provably not sent: it may go again later. Anything unexpected leaves the row in
        # ``submitting``, and the next pass reconciles it.
        ledger.transition(
            record.id, FileState.claimed, expect=FileState.submitting, reason=f"not sent: {exc}"
        )
        raise
    record = ledger.transition(
        record.id,
        FileState.tracking,
        expect=FileState.submitting,
        import_task_id=task_id,
        details=with_details(record, schedule=route.schedule) if route.schedule else record.details,
    )
    log.info("file.submitted", file_id=record.id, import_task_id=task_id)
    return record


async def _unowned_tasks(
    client: IsalesClient, ledger: Ledger, record: FileRecord
) -> list[ImportTask]:
    """Tasks of the campaign, begun in the submission's window or not yet, that no row owns."""
    assert record.submitted_at is not None
    since = datetime.fromisoformat(record.submitted_at) - _WINDOW_SLACK
    candidates = []
    offset = 0
    for _ in range(_RECONCILE_PAGES):
        tasks, total = await client.query_tasks(record.campaign_id, offset=offset)
        for task in tasks:
            begun = _parse_time(task.begin_time)
            if (begun is None or begun >= since) and ledger.task_owner(
                record.campaign_id, task.task_id
            ) is None:
                candidates.append(task)
        offset += len(tasks)
        if not tasks or offset >= total:
            break
    return candidates


async def reconcile(
    client: IsalesClient,
    ledger: Ledger,
    record: FileRecord,
    *,
    cause: str,
    grace_s: float,
    poll_s: float,
) -> FileRecord:
    """Find the import task of a submission whose answer was lost, or park the file.

    A task is adopted only if it is the single unowned task of the campaign in the submission's
    time window. A request that timed out may still be running on the server, so while no task
    has appeared, look again for ``grace_s`` before concluding.
    """
    deadline = time.monotonic() + grace_s
    while True:
        candidates = await _unowned_tasks(client, ledger, record)
        if candidates or time.monotonic() >= deadline:
            break
        await asyncio.sleep(poll_s)
    if len(candidates) == 1:
        task_id = candidates[0].task_id
        log.info("file.reconciled", file_id=record.id, import_task_id=task_id)
        return ledger.transition(
            record.id,
            FileState.tracking,
            expect=FileState.submitting,
            import_task_id=task_id,
            reason=f"answer lost ({cause}); adopted the single new import task {task_id}",
        )
    reason = (
        f"uploadFileServer may or may not have been accepted ({cause}); {len(candidates)} "
        f"unowned import tasks match its time window after {grace_s:g} s. Check the campaign's "
        "import tasks in iSales, "
        "then run 'isales-watcher ledger reprocess' only if it was not imported."
    )
    log.error("file.parked_uncertain", file_id=record.id, reason=reason)
    return ledger.transition(
        record.id, FileState.uncertain, expect=FileState.submitting, reason=reason
    )
