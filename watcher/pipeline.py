"""The flow of one file after the gate, driven by its ledger row: claim to settle."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from watcher.claim import claim, resolve_claim
from watcher.errors import (
    ApiUnavailableError,
    FileGoneError,
    LedgerBusyError,
    LedgerError,
    SkipFileError,
    SourceDeniedError,
    SourceRefusedError,
    StateChangedError,
    TransientError,
    WatcherError,
    WorkbookRejected,
)
from watcher.gate import ZipVerdict, is_candidate
from watcher.health import Health
from watcher.isales.client import IsalesClient
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, Outcome, RemoteEntry
from watcher.settings import RouteSettings, Settings
from watcher.settle import settle, write_parked_receipt
from watcher.sources import Source, too_large
from watcher.submit import Reconciler, reject_duplicate, submit, with_details
from watcher.track import Tracker, track
from watcher.validate import Report, ValidationOptions
from watcher.validate.pool import ValidationPool
from watcher.validate.report import Limits

__all__ = ("GATE_REASONS", "Pipeline")

log = structlog.get_logger(__name__)

GATE_REASONS = {
    ZipVerdict.incomplete: (
        "the file is not a complete .xlsx: it stopped changing but its end is missing "
        "(an interrupted upload?). Upload it again."
    ),
    ZipVerdict.not_zip: "the file is not an .xlsx workbook (it is not a ZIP archive).",
    ZipVerdict.old_excel: (
        "the file is an Excel 97-2003 .xls or a password-protected workbook. Save it as "
        "'Excel Workbook (*.xlsx)' without a password."
    ),
}
_GATE_KINDS = {  # the problem kind whose advice the receipt gives
    ZipVerdict.incomplete: "truncated",
    ZipVerdict.not_zip: "not_xlsx",
    ZipVerdict.old_excel: "old_xls",
}
_MAX_CRASHES = 3
_BUSY_PAUSE_S = 5.0  # after a busy ledger, rows are taken up again this much later
_LEDGER_RESERVE_BYTES = 64_000_000  # a work copy never takes the ledger's last room
_MAX_REFUSALS = 5  # a path the server refuses this often is not going to work by itself
# A busy iSales (429, "called too frequently") is asked again this often before the file waits.
_SEND_ATTEMPTS = 4


class Pipeline:
    """Carries ledger rows forward. Each step reads the row, acts, and writes the next state."""

    def __init__(
        self,
        *,
        settings: Settings,
        source: Source,
        ledger: Ledger,
        client: IsalesClient,
        pool: ValidationPool,
        server_id: str,
        stop: asyncio.Event,
        health: Health,
    ) -> None:
        self.settings = settings
        self.source = source
        self.ledger = ledger
        self.client = client
        self.pool = pool
        self.server_id = server_id
        self.stop = stop
        self.health = health
        self.work_dir = settings.daemon.state_dir / "work"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._slots = asyncio.Semaphore(settings.daemon.max_parallel_files)
        # One submission per campaign at a time: a lost answer then has one candidate task.
        self._campaign_locks: dict[str, asyncio.Lock] = {}
        self.driving: set[str] = set()
        # Rows whose drive ended on a busy ledger, and until when (monotonic) not to try again.
        self.interrupted: set[str] = set()
        self.busy_until = 0.0
        self.reconciler = Reconciler(client, ledger, settings.isales)
        self.tracker = Tracker(client, poll_s=settings.isales.track_poll_s, stop=stop)

    def _route(self, record: FileRecord) -> RouteSettings:
        route = self.settings.route(record.route, record.campaign_id)
        if route is None:
            # The route was renamed or removed since the claim: finish with what the row says.
            return RouteSettings(
                name=record.route, inbox=record.inbox, campaign_id=record.campaign_id
            )
        return route

    async def intake(
        self, route: RouteSettings, entry: RemoteEntry, verdict: ZipVerdict
    ) -> FileRecord | None:
        """Claim a file the gate let through; a file the gate condemned is settled as rejected."""
        record = await claim(self.source, self.ledger, route, entry)
        if (
            record is None
            or verdict is ZipVerdict.complete
            or record.state is not FileState.claimed
        ):
            return record
        report = Report()
        report.add(_GATE_KINDS[verdict], None, None, "", GATE_REASONS[verdict])
        try:
            return self.ledger.transition(
                record.id,
                FileState.settling,
                expect=FileState.claimed,
                outcome=Outcome.rejected,
                reason=GATE_REASONS[verdict],
                details=with_details(record, validation=report.as_json()),
            )
        except StateChangedError as exc:
            return self._yield_to_operator(exc)

    async def intake_unmatched(self, route: RouteSettings, entry: RemoteEntry) -> FileRecord | None:
        """Claim a settled file whose name the route does not take, to answer it in rejected/.

        Claimed like any other file, so that it is never handled twice; its claimed step
        (:meth:`_answer_unmatched`) decides from the name, after a restart too. Nothing reads it.
        """
        return await claim(self.source, self.ledger, route, entry)

    def _answer_unmatched(self, record: FileRecord, route: RouteSettings) -> FileRecord:
        self.health.unmatched.labels(route.name, "reject").inc()
        return self.ledger.transition(
            record.id,
            FileState.settling,
            expect=FileState.claimed,
            outcome=Outcome.rejected,
            reason=f"the name does not fit the route's pattern {route.pattern}",
            details=with_details(record, unmatched={"pattern": route.pattern}),
        )

    async def drive(self, record: FileRecord) -> None:
        """Advance a row until it is terminal, or until the daemon stops (it resumes later)."""
        self.driving.add(record.id)
        self.interrupted.discard(record.id)
        try:
            await self._drive(record)
        except StateChangedError as exc:
            self._yield_to_operator(exc)
        except LedgerBusyError as exc:
            # Nothing of that step was written: the row is where it was, as after a crash.
            log.warning("ledger.busy", file_id=record.id, error=str(exc))
            self.interrupted.add(record.id)
            self.busy_until = time.monotonic() + _BUSY_PAUSE_S
        finally:
            self.driving.discard(record.id)

    def _yield_to_operator(self, exc: StateChangedError) -> FileRecord:
        """An operator moved the row (``ledger park``...) while the daemon worked on it: their
        word wins and this work on the file is dropped. Anything else is a bug: it stops."""
        if not self.ledger.operator_acted(exc.file_id):
            raise exc
        current = self.ledger.get(exc.file_id)
        log.warning(
            "file.operator_took_over",
            file_id=current.id,
            state=current.state.value,
            reason=current.reason,
        )
        return current

    async def _drive(self, record: FileRecord) -> None:
        failures = crashes = 0
        refusals: Counter[FileState] = Counter()  # per step: the server said no to this path
        denials: Counter[FileState] = Counter()  # ... and said "permission denied"
        structlog.contextvars.bind_contextvars(file_id=record.id)
        while not record.state.is_terminal and not self.stop.is_set():
            try:
                advanced = await self._step(record)
            except FileGoneError as exc:
                failures += 1
                advanced = await self._gone(record, exc, failures)
            except (TransientError, SkipFileError) as exc:
                failures += 1
                refusals[record.state] += isinstance(exc, SourceRefusedError)
                denials[record.state] += isinstance(exc, SourceDeniedError)
                advanced = await self._failed_step(
                    record, exc, failures, refusals[record.state], denials[record.state]
                )
            except LedgerError:
                raise
            except Exception as exc:
                crashes += 1
                log.exception("file.crashed", state=record.state.value)
                advanced = self.ledger.get(record.id)
                if crashes >= _MAX_CRASHES and advanced.state is FileState.claimed:
                    advanced = self.ledger.transition(
                        record.id,
                        FileState.settling,
                        expect=FileState.claimed,
                        outcome=Outcome.rejected,
                        reason=f"the file could not be processed ({type(exc).__name__}: {exc}); "
                        "please report this to the operators",
                    )
                else:
                    await self._pause(min(self.settings.daemon.max_backoff_s, 5.0 * crashes))
            if advanced is None:
                return  # stopping while tracking
            if advanced.state is FileState.uncertain:
                await self._parked_receipt(advanced)
            if advanced.state is FileState.parked:
                log.warning("file.operator_took_over", state=advanced.state.value)
            record = advanced

    async def _failed_step(
        self, record: FileRecord, exc: WatcherError, failures: int, refusals: int, denials: int
    ) -> FileRecord:
        """Wait and try again; a file the server keeps denying us is rejected."""
        self.health.retries.labels(record.state.value).inc()
        refused = isinstance(exc, SourceRefusedError)
        if record.state is FileState.claimed and denials >= _MAX_REFUSALS:
            # Nothing was sent: say so, and where, instead of trying for ever.
            return self.ledger.transition(
                record.id,
                FileState.settling,
                expect=FileState.claimed,
                outcome=Outcome.rejected,
                reason=f"the file could not be read after it was taken in ({exc}); check its "
                "permissions and drop it again",
            )
        daemon = self.settings.daemon
        wait_s = min(daemon.max_backoff_s, daemon.retry_backoff_s * 2.0 ** (failures - 1))
        if isinstance(exc, ApiUnavailableError) and exc.retry_after_s is not None:
            wait_s = min(daemon.max_backoff_s, max(wait_s, exc.retry_after_s))
        if refused and refusals == _MAX_REFUSALS and record.state is FileState.settling:
            # Its outcome is decided and recorded; only the move is left, and it keeps failing.
            stuck = {"error": str(exc), "attempts": failures}
            self.ledger.update(record.id, details=with_details(record, settle_stuck=stuck))
            log.error(
                "file.settle_stuck",
                outcome=record.outcome,
                error=str(exc),
                advice="the file stays in processing/ until the move works; fix the folder",
            )
        log.warning("file.step_failed", state=record.state.value, error=str(exc), retry_in_s=wait_s)
        await self._pause(wait_s)
        return self.ledger.get(record.id)

    async def recheck(self, record: FileRecord) -> None:
        """Look at an uncertain file again; carry it on when its task is found, or has ended."""
        self.driving.add(record.id)
        structlog.contextvars.bind_contextvars(file_id=record.id)
        try:
            await self._recheck(record)
        except StateChangedError as exc:
            self._yield_to_operator(exc)
        finally:
            self.driving.discard(record.id)

    async def _recheck(self, record: FileRecord) -> None:
        current = self.ledger.get(record.id)
        if current.state is not FileState.uncertain or current.recheck_at is None:
            return  # an operator settled it meanwhile
        if current.import_task_id is not None:
            # Its task is known, it had just not ended: track it once more.
            advanced: FileRecord | None = self.ledger.transition(
                record.id,
                FileState.tracking,
                expect=FileState.uncertain,
                reason=f"looking at import task {current.import_task_id} again",
                recheck_at=None,
                rechecks=current.rechecks + 1,
            )
        else:
            async with self._campaign_lock(record.campaign_id):
                advanced = await self._reconcile_again(record)
        if advanced is None:
            return
        if advanced.state is FileState.uncertain:
            if advanced.reason != current.reason:
                await self._parked_receipt(advanced)
            return
        await self._drive(advanced)

    async def _reconcile_again(self, record: FileRecord) -> FileRecord | None:
        current = self.ledger.get(record.id)
        if current.state is not FileState.uncertain or current.recheck_at is None:
            return None  # an operator settled it while we waited for the campaign
        try:
            return await self.reconciler.recheck(current)
        except LedgerError:
            raise
        except Exception:
            # A bug must not turn into a tight loop: look again much later.
            log.exception("file.recheck_crashed")
            later = datetime.now(UTC) + timedelta(seconds=self.settings.daemon.max_backoff_s)
            self.ledger.update(record.id, recheck_at=later.isoformat(timespec="milliseconds"))
            return None

    async def _gone(self, record: FileRecord, exc: FileGoneError, failures: int) -> FileRecord:
        if record.state is FileState.claimed:
            # Someone took the file out of processing/ before it was sent: nothing to send.
            log.warning("file.vanished", error=str(exc))
            return self.ledger.transition(
                record.id,
                FileState.lost,
                expect=FileState.claimed,
                reason=f"the file was removed from processing/ before it was sent ({exc})",
            )
        await self._pause(min(self.settings.daemon.max_backoff_s, 2.0**failures))
        return self.ledger.get(record.id)

    async def _parked_receipt(self, record: FileRecord) -> None:
        try:
            await write_parked_receipt(self.source, record, self._route(record).receipt_language)
        except TransientError as exc:
            log.warning("file.receipt_failed", error=str(exc))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()

    async def _step(self, record: FileRecord) -> FileRecord | None:
        match record.state:
            case FileState.claiming:
                return await resolve_claim(self.source, self.ledger, record)
            case FileState.claimed:
                return await self._check_and_submit(record)
            case FileState.submitting:
                async with self._campaign_lock(record.campaign_id):
                    return await self.reconciler.reconcile(
                        record,
                        cause="the daemon stopped or failed before the answer to uploadFileServer "
                        "was recorded",
                    )
            case FileState.tracking:
                return await track(
                    self.tracker,
                    self.ledger,
                    record,
                    poll_s=self.settings.isales.track_poll_s,
                    timeout_s=self.settings.isales.track_timeout_s,
                    recheck_s=self.settings.isales.reconcile_recheck_s,
                )
            case FileState.settling:
                return await settle(
                    self.source,
                    self.ledger,
                    record,
                    language=self._route(record).receipt_language,
                )
        raise AssertionError(f"no step for state {record.state}")

    async def _check_and_submit(self, record: FileRecord) -> FileRecord:
        route = self._route(record)
        if not is_candidate(record.name, route.pattern):
            return self._answer_unmatched(record, route)
        local = self.work_dir / f"{record.id}.xlsx"
        try:
            async with self._slots:
                record = await self._check(record, route, local)
        finally:
            local.unlink(missing_ok=True)
        if record.state is not FileState.claimed:
            return record
        for attempt in range(1, _SEND_ATTEMPTS + 1):
            try:
                # Once the POST starts it must finish: a cancelled request would be ambiguous.
                async with self._campaign_lock(record.campaign_id):
                    return await asyncio.shield(self._submit(record, route))
            except ApiUnavailableError as exc:
                # Provably not sent, and the row is claimed again: wait without the campaign
                # lock, so that a long Retry-After holds up nothing but this file.
                record = self.ledger.get(record.id)
                if record.state is not FileState.claimed:
                    return record  # not from the POST itself: the row says what comes next
                if attempt == _SEND_ATTEMPTS or exc.retry_after_s is None:
                    raise
                wait_s = min(self.settings.daemon.max_backoff_s, exc.retry_after_s)
                log.info("file.send_postponed", error=str(exc), retry_in_s=wait_s)
                await self._pause(wait_s)
                if self.stop.is_set():
                    raise
        raise AssertionError("unreachable")

    def _campaign_lock(self, campaign_id: str) -> asyncio.Lock:
        return self._campaign_locks.setdefault(campaign_id, asyncio.Lock())

    async def _submit(self, record: FileRecord, route: RouteSettings) -> FileRecord:
        return await submit(
            self.client,
            self.ledger,
            record,
            route=route,
            server_id=self.server_id,
            file_path=self.settings.relative_to_base(record.processing_dir),
            reconciler=self.reconciler,
        )

    def _room_for(self, size_bytes: int) -> None:
        """The work copy may not take the room the ledger needs: the file waits instead."""
        free = shutil.disk_usage(self.work_dir).free
        if free < size_bytes + _LEDGER_RESERVE_BYTES:
            raise TransientError(
                f"the state directory's disk has {free / 1e6:,.0f} MB free; a copy of this file "
                f"needs {size_bytes / 1e6:,.0f} MB and the ledger keeps "
                f"{_LEDGER_RESERVE_BYTES / 1e6:,.0f} MB: free some space in {self.work_dir}"
            )

    async def _check(self, record: FileRecord, route: RouteSettings, local: Path) -> FileRecord:
        max_bytes = self.settings.validation.max_file_bytes
        try:
            if record.size_bytes > max_bytes:  # the listing says so already: nothing copied
                raise too_large(record.name, max_bytes)
            self._room_for(record.size_bytes)
            sha256 = await self.source.download(record.processing_path, local, max_bytes)
        except WorkbookRejected as exc:
            report = Report()
            report.add(exc.kind, None, None, "", exc.message)
            return self.ledger.transition(
                record.id,
                FileState.settling,
                expect=FileState.claimed,
                outcome=Outcome.rejected,
                reason=exc.message,
                details=with_details(record, validation=report.as_json()),
            )
        # Conditional, like every write while the file is checked: an operator may park it.
        record = self.ledger.update(record.id, expect=FileState.claimed, sha256=sha256)
        twin = self.ledger.imported_twin(record, "bytes" if route.duplicates != "off" else "off")
        if twin is not None:
            return reject_duplicate(self.ledger, record, twin)
        limits = self.settings.validation
        options = ValidationOptions(
            call_data_json=route.call_data_json,
            duplicate_session_ids_are_errors=route.duplicate_session_ids_are_errors,
            duplicate_numbers_are_errors=route.duplicate_numbers_are_errors,
            workers=limits.processes_per_file,
            limits=Limits(
                max_uncompressed_bytes=limits.max_unpacked_bytes,
                max_ratio=limits.max_compression_ratio,
            ),
        )
        with self.health.validation_seconds.time():
            report = await self.pool.validate(str(local), options)
        log.info(
            "file.validated",
            valid=report.is_valid,
            data_rows=report.data_rows,
            problems=report.counts,
        )
        details = with_details(record, validation=report.as_json())
        if report.is_valid:
            return self.ledger.update(
                record.id,
                expect=FileState.claimed,
                details=details,
                data_rows=report.data_rows,
                rows_fingerprint=report.rows_fingerprint,
            )
        errors = report.error_count
        whole = [p.message for p in report.examples if p.row is None and report.is_error(p.kind)]
        return self.ledger.transition(
            record.id,
            FileState.settling,
            expect=FileState.claimed,
            outcome=Outcome.rejected,
            # A verdict on the whole file says itself; row problems are counted.
            reason=whole[0]
            if report.is_unreadable and whole
            else f"{errors} error{'s' if errors != 1 else ''} found in the file",
            details=details,
        )
