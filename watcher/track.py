"""Track: poll ``queryDataImportTask`` until our import task is finished or failed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import structlog

from watcher.errors import ApiAmbiguousError, ApiRejectedError, TransientError
from watcher.isales.client import IsalesClient
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, ImportTask, Outcome
from watcher.submit import with_details

__all__ = ("track",)

log = structlog.get_logger(__name__)

_BACKOFF = 1.5
_MAX_FACTOR = 6.0


def _counts(task: ImportTask) -> dict[str, object]:
    return {
        "status": {"2": "finished", "3": "failed"}.get(task.status, task.status),
        "succNum": task.succ_num,
        "repeatNum": task.repeat_num,
        "failNum": task.fail_num,
        "blackNum": task.black_num,
        "errMsg": task.err_msg,
        "beginTime": task.begin_time,
        "endTime": task.end_time,
    }


async def track(
    client: IsalesClient,
    ledger: Ledger,
    record: FileRecord,
    *,
    poll_s: float,
    timeout_s: float,
    stop: asyncio.Event,
) -> FileRecord | None:
    """Wait for the import to end and record its counts.

    Returns:
        The row in ``settling``, or ``None`` if the daemon is stopping (tracking resumes after
        the restart, because the row stays ``tracking``).
    """
    assert record.import_task_id is not None
    # Counted from the submission, so that restarts do not stretch it.
    elapsed_s = 0.0
    if record.submitted_at is not None:
        elapsed_s = (
            datetime.now(UTC) - datetime.fromisoformat(record.submitted_at)
        ).total_seconds()
    deadline = time.monotonic() + timeout_s - max(0.0, elapsed_s)
    wait_s = poll_s
    while True:
        try:
            tasks, _ = await client.query_tasks(record.campaign_id, [record.import_task_id])
        except (TransientError, ApiAmbiguousError, ApiRejectedError) as exc:
            log.warning("file.track_failed", file_id=record.id, error=str(exc))
            tasks = []
        task = next((t for t in tasks if t.task_id == record.import_task_id), None)
        if task is not None and task.is_finished:
            finished = task.status == "2"
            reason = (
                None
                if finished
                else f"iSales could not import the file: {task.err_msg or 'no reason given'}"
            )
            record = ledger.transition(
                record.id,
                FileState.settling,
                expect=FileState.tracking,
                outcome=Outcome.done if finished else Outcome.rejected,
                reason=reason,
                details=with_details(record, **{"import": _counts(task)}),
            )
            log.info(
                "file.import_ended",
                file_id=record.id,
                status=task.status,
                succ_num=task.succ_num,
                fail_num=task.fail_num,
            )
            return record
        if time.monotonic() > deadline:
            return ledger.transition(
                record.id,
                FileState.uncertain,
                expect=FileState.tracking,
                reason=f"import task {record.import_task_id} had not ended after {timeout_s:g} s; "
                "check it in iSales, then settle the file with 'isales-watcher ledger'",
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await stop.wait()
        if stop.is_set():
            return None
        wait_s = min(wait_s * _BACKOFF, poll_s * _MAX_FACTOR)
