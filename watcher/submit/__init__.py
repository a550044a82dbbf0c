"""Submit: ``uploadFileServer`` at most once per (campaign, list), and reconciliation.

The ``submitting`` row is durable before the POST. A refused or provably-unsent request goes
back to ``claimed``; an unknown outcome is reconciled (:mod:`watcher.submit.evidence` says what
proves that a task is ours), never re-sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta, timezone

import structlog

from watcher.errors import (
    ApiAmbiguousError,
    ApiRejectedError,
    ApiTrustError,
    ApiUnavailableError,
    LedgerError,
    SignatureRefusedError,
    TaskTakenError,
    WatcherError,
)
from watcher.isales.client import IsalesClient
from watcher.ledger import Ledger, utc_now
from watcher.models import FileRecord, FileState, ImportTask, Outcome
from watcher.settings import IsalesSettings, RouteSettings
from watcher.submit.evidence import Claimant, Verdict, Window, judge

__all__ = ("Reconciler", "reject_duplicate", "scheduled_at", "submit", "with_details")

log = structlog.get_logger(__name__)

_MAX_PAGES = 50
_PAGE = 100  # queryDataImportTask's largest page
_PER_SUBMISSION = (
    "submission",
    "reconciliation",
    "schedule",
    "schedule_time",
    "schedule_zone",
    "schedule_zone_assumed",
    "scheduled_at",
)
_MAX_RECHECK_S = 3600.0


def with_details(record: FileRecord, **extra: object) -> str:
    details = json.loads(record.details) if record.details else {}
    details.update(extra)
    return json.dumps(details, ensure_ascii=False)


def _details(record: FileRecord) -> dict[str, object]:
    return dict(json.loads(record.details)) if record.details else {}


def reject_duplicate(ledger: Ledger, record: FileRecord, twin: FileRecord) -> FileRecord:
    """Settle a claimed file as a duplicate of ``twin``, which reached iSales before it."""
    same = "content" if record.sha256 == twin.sha256 else "rows"
    return ledger.transition(
        record.id,
        FileState.settling,
        expect=FileState.claimed,
        outcome=Outcome.rejected,
        reason=f"duplicate: the same {same} was already imported as {twin.name}",
        details=_duplicate_details(record, twin, same),
    )


def _duplicate_details(record: FileRecord, twin: FileRecord, same: str) -> str:
    return with_details(
        record,
        duplicate_of={
            "ledger_id": twin.id,
            "name": twin.name,
            "import_task_id": twin.import_task_id,
            "received_at": twin.created_at,
            "state": twin.state.value,
            "same": same,
        },
    )


def scheduled_at(hour_minute: tuple[str, str], sent_at: datetime, zone: timezone) -> datetime:
    """When iSales runs a scheduled import: the next ``hour:minute`` in the server's zone."""
    local = sent_at.astimezone(zone)
    at = local.replace(
        hour=int(hour_minute[0]), minute=int(hour_minute[1]), second=0, microsecond=0
    )
    if at <= local:
        at += timedelta(days=1)
    return at.astimezone(UTC)


async def submit(
    client: IsalesClient,
    ledger: Ledger,
    record: FileRecord,
    *,
    route: RouteSettings,
    server_id: str,
    file_path: str,
    reconciler: Reconciler,
) -> FileRecord:
    """Send a validated, claimed file to iSales, once.

    Raises:
        ApiUnavailableError, SignatureRefusedError, ApiTrustError: nothing was sent; the row is
            ``claimed`` again and may be sent later.
    """

    def fresh_details(row: FileRecord, submitted_at: str) -> str:
        # A file sent again (an operator's word) starts a new submission: forget the old one's
        # window and evidence, which would otherwise be taken for this one's.
        details = {k: v for k, v in _details(row).items() if k not in _PER_SUBMISSION}
        details.update(_schedule(client, submitted_at, route))
        return json.dumps(details, ensure_ascii=False)

    begun = ledger.begin_submit(record.id, route.duplicates, details=fresh_details)
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
            details=with_details(record, refused={"code": exc.code, "message": str(exc)}),
        )
    except ApiAmbiguousError as exc:
        log.warning("file.submit_ambiguous", file_id=record.id, error=str(exc))
        record = reconciler.note_lost_answer(record, cause=str(exc))
        return await reconciler.reconcile(record)
    except (ApiUnavailableError, SignatureRefusedError, ApiTrustError) as exc:
        # Provably not sent: it may go again later. Anything unexpected leaves the row in
        # ``submitting``, and the next pass reconciles it.
        ledger.transition(
            record.id, FileState.claimed, expect=FileState.submitting, reason=f"not sent: {exc}"
        )
        raise
    record = ledger.transition(
        record.id, FileState.tracking, expect=FileState.submitting, import_task_id=task_id
    )
    log.info("file.submitted", file_id=record.id, import_task_id=task_id)
    return record


def _schedule(
    client: IsalesClient, submitted_at: str, route: RouteSettings
) -> dict[str, str | bool]:
    """What the receipt and the tracking deadline need to know of a scheduled import."""
    if route.hour_minute is None or route.schedule is None:
        return {}
    zone = client.server_zone
    # The hour comes on the server's clock, not ours.
    sent_at = datetime.fromisoformat(submitted_at)
    at = scheduled_at(
        route.hour_minute, sent_at + timedelta(seconds=client.clock_skew_s), zone or UTC
    ) - timedelta(seconds=client.clock_skew_s)
    offset = (zone or UTC).utcoffset(None) or timedelta(0)
    hours, rest = divmod(int(offset.total_seconds()), 3600)
    zone_name = f"UTC{'+' if offset >= timedelta(0) else '-'}{abs(hours):02d}:{rest // 60:02d}"
    return {
        "schedule": f"{route.schedule} server time ({zone_name}{'' if zone else ', assumed'})",
        # The same in parts, for receipts in other languages.
        "schedule_time": route.schedule,
        "schedule_zone": zone_name,
        "schedule_zone_assumed": zone is None,
        "scheduled_at": at.isoformat(),
    }


class Reconciler:
    """Finds the import task of a submission whose answer was lost, with proof, or parks it.

    A parked (``uncertain``) file is reconciled again with back-off for
    ``isales.reconcile_horizon_s`` after its window closed, and adopts its task when the task
    appears and fits; only when the facts cannot decide is an operator needed.
    """

    def __init__(self, client: IsalesClient, ledger: Ledger, settings: IsalesSettings) -> None:
        self.client = client
        self.ledger = ledger
        self.settings = settings

    def note_lost_answer(self, record: FileRecord, *, cause: str) -> FileRecord:
        """Record when the answer was lost and the window its task can have begun in."""
        ended = datetime.now(UTC)
        return self.ledger.update(
            record.id,
            details=with_details(record, submission=self._submission(record, ended, cause)),
        )

    def _submission(self, record: FileRecord, ended: datetime, cause: str) -> dict[str, object]:
        assert record.submitted_at is not None
        sent = datetime.fromisoformat(record.submitted_at)
        scheduled = _details(record).get("scheduled_at")
        window = Window.around(
            sent,
            ended,
            after=timedelta(seconds=self.settings.reconcile_window_s),
            scheduled_at=datetime.fromisoformat(scheduled) if isinstance(scheduled, str) else None,
        )
        return {
            "sent_at": record.submitted_at,
            "answer_lost_at": ended.isoformat(),
            "cause": cause,
            "window": window.as_json(),
        }

    def window(self, record: FileRecord) -> Window:
        """The row's window; for a row left in ``submitting`` by a crash, from its POST's start."""
        submission = _details(record).get("submission")
        if isinstance(submission, dict) and submission.get("sent_at") == record.submitted_at:
            window = Window.from_json(submission.get("window"))
            if window is not None:
                return window
        assert record.submitted_at is not None
        # The POST cannot have lasted longer than the request timeout.
        ended = datetime.fromisoformat(record.submitted_at) + timedelta(
            seconds=self.settings.request_timeout_s
        )
        data = self._submission(record, ended, "the daemon stopped before the answer was recorded")
        window = Window.from_json(data["window"])
        assert window is not None
        return window

    async def reconcile(self, record: FileRecord, *, cause: str | None = None) -> FileRecord:
        """Adopt the task of a ``submitting`` row, looking for ``reconcile_grace_s``, or park it."""
        submission = _details(record).get("submission")
        fresh = isinstance(submission, dict) and submission.get("sent_at") == record.submitted_at
        if cause is not None and not fresh:
            record = self.ledger.update(
                record.id,
                details=with_details(
                    record,
                    submission=self._submission(
                        record,
                        datetime.fromisoformat(record.submitted_at or utc_now())
                        + timedelta(seconds=self.settings.request_timeout_s),
                        cause,
                    ),
                ),
            )
        deadline = time.monotonic() + self.settings.reconcile_grace_s
        while True:
            verdict = await self._try_judge(record)
            # A request that timed out may still be running on the server: give it time.
            undecided = verdict.task is None and (
                verdict.waiting or not verdict.evidence.get("candidates")
            )
            if not undecided or time.monotonic() >= deadline:
                break
            await asyncio.sleep(self.settings.track_poll_s)
        return self._conclude(record, verdict)

    async def recheck(self, record: FileRecord) -> FileRecord:
        """Look once more for the task of a parked file; adopt it or schedule the next look."""
        return self._conclude(record, await self._try_judge(record))

    async def _try_judge(self, record: FileRecord) -> Verdict:
        try:
            return await self._judge(record)
        except LedgerError:
            raise
        except WatcherError as exc:  # unreachable, busy, refused, an odd reply: look again
            return Verdict(None, True, f"iSales could not be asked ({exc})")

    async def _judge(self, record: FileRecord) -> Verdict:
        window = self.window(record)
        tasks, complete = await self._campaign_tasks(record.campaign_id)
        return judge(
            tasks,
            complete=complete,
            window=window,
            rows=record.data_rows,
            by_counts=self.settings.reconcile_by_counts,
            owned=self.ledger.owned_tasks(record.campaign_id),
            claimants=self._claimants(record),
            zone=self.client.server_zone,
            skew_s=self.client.clock_skew_s,
            now=datetime.now(UTC),
        )

    def _claimants(self, record: FileRecord) -> list[Claimant]:
        """Other files of the campaign whose answer was lost too: a task that fits one of them
        as well is theirs as much as ours, so neither takes it (an operator decides)."""
        return [
            Claimant(other.id, self.window(other), other.data_rows)
            for other in self.ledger.unresolved(record.campaign_id)
            if other.id != record.id
        ]

    async def _campaign_tasks(self, campaign_id: str) -> tuple[list[ImportTask], bool]:
        """Every task of the campaign, and whether the listing was read to its end.

        A task is "the only one that fits" only if none was missed: a listing cut short by the
        page bound, or one that repeats itself (a server ignoring ``offset``), is not complete.
        """
        found: dict[str, ImportTask] = {}
        offset = 0
        for _ in range(_MAX_PAGES):
            page = await self.client.query_tasks(campaign_id, offset=offset)
            known = len(found)
            found.update((t.task_id, t) for t in page.tasks if t.task_id not in found)
            offset += len(page.tasks)
            if len(page.tasks) < _PAGE:
                # The last page. Complete only if the count agrees: an early empty page, or a
                # count that promises more, means something was not listed.
                return list(found.values()), offset >= page.total
            if len(found) == known:
                break  # the same page again: a server that ignores offset
            # A full page: there may be more, whatever the count says.
        return list(found.values()), False

    def _conclude(self, record: FileRecord, verdict: Verdict) -> FileRecord:
        """Write what the facts say, unless an operator settled the file meanwhile."""
        try:
            return self._write_verdict(record, verdict)
        except LedgerError:
            current = self.ledger.get(record.id)
            if current.state is record.state:
                raise
            log.info("file.settled_meanwhile", file_id=record.id, state=current.state.value)
            return current

    def _write_verdict(self, record: FileRecord, verdict: Verdict) -> FileRecord:
        details = with_details(
            record, reconciliation={"verdict": verdict.reason, **verdict.evidence}
        )
        task = verdict.task
        if task is not None:
            try:
                adopted = self.ledger.transition(
                    record.id,
                    FileState.tracking,
                    expect=(FileState.submitting, FileState.uncertain),
                    import_task_id=task.task_id,
                    reason=verdict.reason,
                    details=details,
                    recheck_at=None,
                    rechecks=0,
                )
            except TaskTakenError as exc:
                verdict = Verdict(None, False, str(exc), verdict.evidence)
            else:
                log.info("file.reconciled", file_id=record.id, import_task_id=task.task_id)
                return adopted
        return self._park(record, verdict, details)

    def _park(self, record: FileRecord, verdict: Verdict, details: str) -> FileRecord:
        recheck_at = self._next_recheck(record)
        submission = _details(record).get("submission")
        cause = submission.get("cause") if isinstance(submission, dict) else None
        reason = (
            f"uploadFileServer may or may not have been accepted ({cause or 'answer lost'}); "
            f"{verdict.reason}. "
            + (
                "It is looked at again automatically; "
                if recheck_at is not None
                else "Check the campaign's import tasks in iSales, then "
            )
            + f"settle it with 'isales-watcher ledger resolve {record.id} --imported TASK_ID' "
            "or '--not-imported'."
        )
        rechecks = record.rechecks + (1 if record.state is FileState.uncertain else 0)
        if record.state is FileState.uncertain:
            log.info("file.still_uncertain", file_id=record.id, reason=verdict.reason)
            return self.ledger.update(
                record.id,
                expect=FileState.uncertain,
                reason=reason,
                details=details,
                recheck_at=recheck_at,
                rechecks=rechecks,
            )
        log.error("file.parked_uncertain", file_id=record.id, reason=reason)
        return self.ledger.transition(
            record.id,
            FileState.uncertain,
            expect=FileState.submitting,
            reason=reason,
            details=details,
            recheck_at=recheck_at,
            rechecks=rechecks,
        )

    def _next_recheck(self, record: FileRecord) -> str | None:
        rechecks = record.rechecks if record.state is FileState.uncertain else 0
        wait_s = min(_MAX_RECHECK_S, self.settings.reconcile_recheck_s * 2.0**rechecks)
        at = datetime.now(UTC) + timedelta(seconds=wait_s)
        horizon = self.window(record).closes_at + timedelta(
            seconds=self.settings.reconcile_horizon_s
        )
        return at.isoformat(timespec="milliseconds") if at <= horizon else None
