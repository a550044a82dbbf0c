"""Track: poll ``queryDataImportTask`` until an import task is finished or failed.

One :class:`Tracker` serves every file in flight: each round asks once per campaign for all of
its tasks in flight. The ``importTaskIds`` filter is only in the vendor's sample, not in the
parameter table, so a reply that ignores it is paged through until the tasks are found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from watcher.errors import ApiAmbiguousError, ApiRejectedError, TransientError
from watcher.isales.client import IsalesClient
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, ImportTask, Outcome
from watcher.submit import with_details

__all__ = ("Tracker", "track")

log = structlog.get_logger(__name__)

_BACKOFF = 1.5
_MAX_LOOKS = 10  # after the deadline, the task is looked at again this often
_MAX_LOOK_S = 3600.0
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


class Tracker:
    """Waits for import tasks to end, with one query per campaign per round.

    Args:
        client: the iSales client.
        poll_s: the first pause between rounds; it grows to 6x while nothing ends.
        stop: when set, every waiter returns ``None``.
    """

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def __init__(self, client: IsalesClient, *, poll_s: float, stop: asyncio.Event) -> None:
        self._client = client
        self._poll_s = poll_s
        self._stop = stop
        self._waiting: dict[str, dict[str, list[asyncio.Future[ImportTask]]]] = {}
        self._rounds: dict[str, asyncio.Task[None]] = {}
        self._news: dict[str, asyncio.Event] = {}

    async def wait(self, campaign_id: str, task_id: str, timeout_s: float) -> ImportTask | None:
        """The task once it has ended; None after ``timeout_s`` or when the daemon stops."""
        future: asyncio.Future[ImportTask] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(campaign_id, {}).setdefault(task_id, []).append(future)
        self._news.setdefault(campaign_id, asyncio.Event()).set()
        if campaign_id not in self._rounds:
            self._rounds[campaign_id] = asyncio.create_task(self._run(campaign_id))
        stopping = asyncio.ensure_future(self._stop.wait())
        waits: list[asyncio.Future[Any]] = [future, stopping]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            waiters = self._waiting.get(campaign_id, {}).get(task_id, [])
            if future in waiters:
                waiters.remove(future)
                if not waiters:
                    self._waiting[campaign_id].pop(task_id, None)
        return future.result() if future.done() and not future.cancelled() else None

    async def _run(self, campaign_id: str) -> None:
        wait_s = self._poll_s
        news = self._news[campaign_id]
        try:
            while self._waiting.get(campaign_id) and not self._stop.is_set():
                news.clear()
                if self._round_ended_some(campaign_id, await self._round(campaign_id)):
                    wait_s = self._poll_s
                else:
                    wait_s = min(wait_s * _BACKOFF, self._poll_s * _MAX_FACTOR)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await news.wait()  # a new file in flight: ask at once
                if news.is_set():
                    wait_s = self._poll_s
        finally:
            self._rounds.pop(campaign_id, None)

    def _round_ended_some(self, campaign_id: str, found: dict[str, ImportTask]) -> bool:
        ended = False
        for task_id, task in found.items():
            if not task.is_finished:
                continue
            for future in self._waiting.get(campaign_id, {}).pop(task_id, []):
                if not future.done():
                    future.set_result(task)
                    ended = True
        return ended

    async def _round(self, campaign_id: str) -> dict[str, ImportTask]:
        wanted = list(self._waiting.get(campaign_id, {}))
        try:
            return await self._client.find_tasks(campaign_id, wanted)
        except (TransientError, ApiAmbiguousError, ApiRejectedError) as exc:
            log.warning("file.track_failed", campaign_id=campaign_id, error=str(exc))
        except Exception:  # a bug must not silence tracking for every file of the campaign
            log.exception("file.track_crashed", campaign_id=campaign_id)
        return {}


def _deadline_from(record: FileRecord) -> datetime | None:
    """A scheduled import's clock starts at its hour; any other at the submission."""
    details = json.loads(record.details) if record.details else {}
    scheduled = details.get("scheduled_at")
    if isinstance(scheduled, str):
        return datetime.fromisoformat(scheduled)
    return datetime.fromisoformat(record.submitted_at) if record.submitted_at else None


async def track(
    tracker: Tracker,
    ledger: Ledger,
    record: FileRecord,
    *,
    poll_s: float,
    timeout_s: float,
    recheck_s: float,
) -> FileRecord | None:
    """Wait for the import to end and record its counts.

    Returns:
        The row in ``settling`` or parked, or ``None`` if the daemon is stopping (tracking
        resumes after the restart, because the row stays ``tracking``).
    """
    assert record.import_task_id is not None
    started = _deadline_from(record)
    elapsed_s = (datetime.now(UTC) - started).total_seconds() if started else 0.0
    # Counted from the submission, so that restarts do not stretch it; asked at least once.
    remaining_s = max(timeout_s - elapsed_s, poll_s * 3)
    task = await tracker.wait(record.campaign_id, record.import_task_id, remaining_s)
    if task is None:
        if tracker.stopping:
            return None
        # Looked at again with back-off, a bounded number of times: a long import still ends.
        looks = record.rechecks
        again = None
        if looks < _MAX_LOOKS:
            wait_s = min(_MAX_LOOK_S, recheck_s * 2.0**looks)
            again = (datetime.now(UTC) + timedelta(seconds=wait_s)).isoformat(
                timespec="milliseconds"
            )
        return ledger.transition(
            record.id,
            FileState.uncertain,
            expect=FileState.tracking,
            reason=f"import task {record.import_task_id} had not ended after {timeout_s:g} s; "
            + ("it is looked at again automatically; " if again else "")
            + f"once it has ended in iSales, settle the file with 'isales-watcher ledger resolve "
            f"{record.id} --imported {record.import_task_id} --reason ...'",
            recheck_at=again,
        )
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
