"""The daemon's life cycle: start, recover, watch the inboxes, drain on SIGTERM, close."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from watcher.control import ControlServer
from watcher.errors import (
    ConfigError,
    HostKeyError,
    LedgerBusyError,
    LedgerError,
    SkipFileError,
    SourceRefusedError,
    SourceUnavailableError,
    TransientError,
    WatcherError,
)
from watcher.gate import (
    TAIL_BYTES,
    Name,
    SeenOnce,
    StabilityGate,
    ZipVerdict,
    check_zip,
    sort_name,
)
from watcher.health import Health
from watcher.isales.client import IsalesClient, choose_server
from watcher.ledger import Ledger, StateLock, utc_now
from watcher.models import FileState, RemoteEntry
from watcher.notify import Notifier
from watcher.pipeline import Pipeline
from watcher.settings import RouteSettings, Settings, is_campaign_folder
from watcher.sources import Source, check_access, make_source
from watcher.sources.lease import InboxLeases
from watcher.sources.listing import Listings
from watcher.status import StatusPage
from watcher.validate.pool import CheckLimits, ValidationPool

__all__ = ("Daemon",)

# How long a ledger write waits for another process's before the step is left for later: the
# wait blocks the event loop.
_LEDGER_WAIT_MS = 1000

log = structlog.get_logger(__name__)

_MAX_BACKOFF_S = 300.0
_MAX_CLAIM_ATTEMPTS = 3
_ACCESS_RECHECK_S = 30.0
_T = TypeVar("_T")
# What the watch loop takes a file as: a list the gate judged, or a name the route does not take.
_Ready = ZipVerdict | Literal[Name.unmatched]


class _StopRequestedError(Exception):
    """A stop was requested while waiting."""


class Daemon:
    """Watches every route's inbox and carries each ready file through its flow.

    Life cycle: :meth:`run` opens the ledger, the source and the iSales client, resumes what a
    previous run left unfinished, then polls until :meth:`request_stop`; it then stops intake,
    lets in-flight steps finish for ``shutdown_grace_s`` and closes everything.
    """

    def __init__(
        self, settings: Settings, *, source: Source | None = None, config_path: Path | None = None
    ) -> None:
        self.settings = settings
        self._config_path = config_path  # named in the commands the status page shows
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.failed: BaseException | None = None
        self._source: Source = source or make_source(settings)
        self._gate = StabilityGate(settings.daemon.settle_s)
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()
        # Asked of the ledger once per pass: files in hand, and the claims begun since.
        self._in_hand: dict[str, int] = {}
        self._held: set[str] = set()
        self._settling: set[str] = set()  # inboxes with a file still settling: list afresh
        self._listings = Listings(self._source, full_every=settings.daemon.full_listing_every)
        self._refusals: dict[str, tuple[RemoteEntry, int]] = {}
        self._ignored = SeenOnce()  # unmatched files left alone, each counted once
        self._recheck_in_s = settings.daemon.poll_interval_s
        self._odd_folders: set[str] = set()
        self._control: ControlServer | None = None
        self._api_probe: asyncio.Task[None] | None = None
        self._route_errors: dict[str, str] = {}
        self._access_ok: set[str] = set()  # inboxes the daemon proved it may work in
        self._access_refused: dict[str, tuple[float, str]] = {}
        self._leases = InboxLeases(
            self._source,
            interval_s=settings.daemon.lease_interval_s,
            stale_after=settings.daemon.lease_stale_after,
        )
        self._full = False  # max_in_flight reached (said once)
        self._renewals: asyncio.Task[None] | None = None
        self.validation: ValidationPool | None = None
        self._notifier = Notifier()

    def request_stop(self) -> None:
        """Stop intake and begin the drain (the first SIGTERM or Ctrl-C)."""
        first = not self.stop.is_set()
        self.stop.set()  # first: nothing, not even a failing log line, may hold up a stop
        if first:
            log.info("daemon.stopping")

    async def run(self) -> None:
        """Run until stopped. Raises what made it stop when that was a failure."""
        daemon = self.settings.daemon
        if self.settings.isales.base_url.startswith("http://"):
            log.warning(
                "isales.insecure_http",
                base_url=self.settings.isales.base_url,
                advice="allow_insecure_http is for test benches only",
            )
        lock = StateLock(daemon.state_dir)
        try:
            ledger = Ledger(daemon.state_dir / "ledger.sqlite3", busy_timeout_ms=_LEDGER_WAIT_MS)
            ledger.verify()
        except BaseException:
            lock.release()
            raise
        self.health = Health(self.settings, ledger, self._gate.waiting)
        self.health.source_stalled_s = self._source.stalled_s
        page = StatusPage(self.settings, ledger, self.health, config_path=self._config_path)
        control = self._control = (
            ControlServer(self.health, daemon.control_listen, page=page)
            if daemon.control_listen
            else None
        )
        limits = self.settings.validation
        pool = self.validation = ValidationPool(
            daemon.validation_workers, CheckLimits(limits.max_seconds, limits.max_memory_mb)
        )
        self.health.validation_ok = lambda: pool.healthy
        try:
            if control is not None:
                await control.start()
            await pool.warm_up()
            async with IsalesClient(
                self.settings.isales,
                on_call=self.health.api_call,
                max_wait_s=daemon.max_backoff_s,
            ) as client:
                server_id = await self._resolve_server_id(client)
                if server_id is None:
                    return
                if client.server_zone is None and any(r.schedule for r in self.settings.routes):
                    log.warning(
                        "isales.schedule_zone_unknown",
                        advice="scheduled imports run at the server's hour; its zone is unknown "
                        "(the Date header is GMT), so UTC is assumed: set isales.server_utc_offset",
                    )
                pipeline = Pipeline(
                    settings=self.settings,
                    source=self._source,
                    ledger=ledger,
                    client=client,
                    pool=pool,
                    server_id=server_id,
                    stop=self.stop,
                    health=self.health,
                )
                self._resume(pipeline, ledger, at_start=True)
                log.info(
                    "daemon.started",
                    routes=[r.name for r in self.settings.routes],
                    server_id=server_id,
                )
                self.ready.set()
                self._notifier.ready(f"watching {len(self.settings.routes)} route(s)")
                watchdog = asyncio.create_task(self._feed_watchdog())
                renewals = self._renewals = asyncio.create_task(self._renew_leases())
                await self._watch(pipeline)
                self._notifier.stopping()
                watchdog.cancel()
                renewals.cancel()
                await self._drain()
        finally:
            if self._api_probe is not None:
                self._api_probe.cancel()
            if self._renewals is not None:
                self._renewals.cancel()  # also when the watch loop ended by an error
            pool.shutdown()
            with contextlib.suppress(Exception):  # a server gone now keeps the lease till stale
                async with asyncio.timeout(self.settings.sftp.op_timeout_s):
                    await self._leases.release()
            if control is not None:
                await control.close()
            await self._source.close()
            ledger.close()
            lock.release()
            log.info("daemon.stopped")
        if self.failed is not None:
            raise self.failed

    @property
    def control_address(self) -> str:
        """Where the control plane listens (host:port), once started."""
        return self._control.address if self._control is not None else ""

    async def _pause(self, seconds: float, changed: asyncio.Event | None = None) -> None:
        waits = [asyncio.ensure_future(self.stop.wait())]
        if changed is not None:
            waits.append(asyncio.ensure_future(changed.wait()))
        _, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    async def _resolve_server_id(self, client: IsalesClient) -> str | None:
        failures = 0
        configured = [self.settings.isales.server_id] if self.settings.isales.server_id else None
        while not self.stop.is_set():
            try:
                servers = await self._unless_stopped(client.query_servers(configured))
            except _StopRequestedError:
                return None
            except TransientError as exc:
                failures += 1
                log.error("isales.unavailable", error=str(exc))
                await self._pause(min(_MAX_BACKOFF_S, 2.0**failures))
                continue
            except WatcherError as exc:
                raise ConfigError(f"queryServer failed: {exc}") from None
            return choose_server(servers, self.settings).server_id
        return None

    async def _unless_stopped(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Await a side-effect-free call, abandoning it when a stop is requested."""
        task = asyncio.create_task(work)
        stopping = asyncio.create_task(self.stop.wait())
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise _StopRequestedError
        return task.result()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guard(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        """A file's trouble stays with that file; only a ledger that cannot be written stops."""
        try:
            await work
        except LedgerBusyError as exc:
            # Another process holds the ledger (a command, a backup): nothing was written, as
            # after a crash at that point; the row is taken up again once the ledger is free.
            log.warning("ledger.busy", error=str(exc))
        except LedgerError as exc:
            log.critical("ledger.failed", error=str(exc))
            self.failed = exc
            self.request_stop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("file.task_crashed")

    def _resume(self, pipeline: Pipeline, ledger: Ledger, *, at_start: bool) -> None:
        """Carry forward rows nobody drives: left by a crash, or re-queued by an operator."""
        if time.monotonic() < pipeline.busy_until:
            return  # the ledger was busy a moment ago: do not stall the loop on it again
        for record in ledger.unfinished():
            if record.id in pipeline.driving:
                continue
            in_progress = record.id not in pipeline.interrupted  # else a busy ledger cut it
            if record.state is FileState.claiming and not at_start and in_progress:
                continue  # a claim in progress right now
            log.info("file.resumed", file_id=record.id, state=record.state.value)
            pipeline.driving.add(record.id)  # now, not when the task first runs: no twin drivers
            self._spawn(pipeline.drive(record))

    async def _watch(self, pipeline: Pipeline) -> None:
        failures = 0
        changed = self._source.change_event(
            [r.parent if r.is_template else r.inbox_path for r in self.settings.routes]
        )
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            began = loop.time()
            self.health.beat()
            self._resume(pipeline, pipeline.ledger, at_start=False)
            self._recheck(pipeline)
            self._probe_isales(pipeline)
            self._recheck_in_s = self.settings.daemon.poll_interval_s
            if changed is not None:
                changed.clear()
            self._in_hand, self._held = pipeline.ledger.in_hand(), set(self._busy)
            try:
                for route in await self._routes():
                    await self._scan_contained(pipeline, route)
                failures = 0
                self.health.listing_ok()
            except HostKeyError as exc:
                failures += 1
                log.error("sftp.host_key_rejected", error=str(exc))
            except SourceUnavailableError as exc:
                failures += 1
                log.warning("sftp.unavailable", error=str(exc))
            if failures:
                wait_s = min(_MAX_BACKOFF_S, self.settings.daemon.poll_interval_s * 2.0**failures)
                await self._pause(wait_s)
            else:
                # Look again when a file may have settled, or at once when the disk says so;
                # the poll interval is a period: the pass's own time is taken off the pause.
                await self._pause(max(0.0, self._recheck_in_s - (loop.time() - began)), changed)

    async def _feed_watchdog(self) -> None:
        """Ping systemd's watchdog only while the watch loop goes round: a hang means a restart."""
        interval_s = self._notifier.watchdog_s
        if interval_s is None:
            return
        while not self.stop.is_set():
            alive, details = self.health.liveness()
            if alive:
                self._notifier.watchdog()
            else:
                log.error("daemon.stuck", **details)
            await self._pause(interval_s)

    async def _renew_leases(self) -> None:
        """Beat every held lease each half interval, whatever the watch loop is doing."""
        while not self.stop.is_set():
            await self._pause(self.settings.daemon.lease_interval_s / 2)
            await self._leases.renew()

    def _probe_isales(self, pipeline: Pipeline) -> None:
        """An idle daemon still asks iSales now and then, so that readiness means something.

        In the background, once, without retries: a slow or busy iSales never holds up the loop.
        """
        if (
            self._api_probe is not None
            or self.health.api_age_s() < self.settings.daemon.api_probe_s
        ):
            return

        async def probe() -> None:
            try:
                await pipeline.client.query_servers(retry=False)
            except WatcherError as exc:
                log.warning("isales.probe_failed", error=str(exc))
            finally:
                self._api_probe = None

        self._api_probe = asyncio.create_task(probe())

    def _recheck(self, pipeline: Pipeline) -> None:
        """Reconcile again the parked files whose next look is due."""
        for record in pipeline.ledger.due_rechecks(utc_now()):
            if record.id not in pipeline.driving:
                pipeline.driving.add(record.id)
                self._spawn(pipeline.recheck(record))

    async def _routes(self) -> list[RouteSettings]:
        """The routes to scan now: template routes become one route per campaign folder."""
        routes = []
        for route in self.settings.routes:
            if not route.is_template:
                routes.append(route)
                continue
            try:
                names = await self._listings.folders(route.parent)
            except SourceUnavailableError:
                raise  # the server, not the folder: the whole pass waits
            except WatcherError as exc:  # this template's folder: the other routes go on
                self._route_failed(route, exc)
                continue
            self._route_errors.pop(route.name, None)
            for name in names:
                if is_campaign_folder(name):
                    routes.append(route.for_campaign(name))
                elif not name.startswith(".") and name not in self._odd_folders:
                    self._odd_folders.add(name)
                    log.warning(
                        "route.folder_ignored",
                        route=route.name,
                        folder=name,
                        advice="a campaign folder is named by the campaign id",
                    )
        return routes

    async def _scan_contained(self, pipeline: Pipeline, route: RouteSettings) -> None:
        """One inbox's trouble (gone, unreadable, a bug) stays with that inbox."""
        try:
            await self._check_access(route)
            await self._leases.hold(route.inbox_path)
            waiting = await self._scan(pipeline, route)
        except SourceUnavailableError:
            raise  # the server, not the inbox: the whole pass waits
        except WatcherError as exc:
            self._route_failed(route, exc)
            return
        except Exception:
            log.exception("route.scan_crashed", route=route.name, inbox=route.inbox)
            return
        self._route_errors.pop(route.name, None)
        self.health.route_listed(route.name, route.inbox_path, waiting_for_room=waiting)

    def _route_failed(self, route: RouteSettings, exc: WatcherError) -> None:
        if self._route_errors.get(route.name) != str(exc):  # said once, not every poll
            log.error("route.scan_failed", route=route.name, inbox=route.inbox, error=str(exc))
        self._route_errors[route.name] = str(exc)
        refused = route.inbox_path in self._access_refused
        self.health.route_failed(route.name, route.inbox_path, str(exc), refused=refused)

    async def _check_access(self, route: RouteSettings) -> None:
        """Before an inbox's first claim: may the daemon move files out of it? (once; a refused
        inbox is tried again every ``_ACCESS_RECHECK_S``, and not scanned meanwhile)."""
        inbox = route.inbox_path
        if inbox in self._access_ok:
            return
        refused = self._access_refused.get(inbox)
        if refused is not None and time.monotonic() - refused[0] < _ACCESS_RECHECK_S:
            raise SourceRefusedError(refused[1])
        try:
            await check_access(self._source, inbox)
        except SourceRefusedError as exc:
            self._access_refused[inbox] = (time.monotonic(), str(exc))
            raise
        self._access_refused.pop(inbox, None)
        self._access_ok.add(inbox)

    async def _scan(self, pipeline: Pipeline, route: RouteSettings) -> int:
        """Claim what is ready; returns how many files wait for room when none could be taken
        (the route is starved while that lasts)."""
        inbox = route.inbox_path
        # Re-used while the folder is unchanged, unless a file here is still settling.
        entries = await self._listings.files(inbox, fresh=inbox in self._settling)
        self._settling.discard(inbox)
        keys = [posixpath.join(inbox, entry.name) for entry in entries]
        self._gate.retain(keys, inbox + "/")
        self._ignored.retain(keys, inbox + "/")
        taken = 0
        room = self._room(inbox)
        # Oldest first, and a bounded number of claims per pass: a folder of 100,000 files is
        # worked through in order instead of all at once.
        ordered = sorted(zip(keys, entries, strict=True), key=lambda item: item[1].mtime)
        for index, (key, entry) in enumerate(ordered):
            if taken >= room:
                # The daemon has enough in hand: the rest waits in the inbox, unclaimed.
                waiting = sum(self._waits(route, k, e) for k, e in ordered[index:])
                if waiting:
                    self._settling.add(inbox)  # seen afresh when room comes, never from memory
                return 0 if taken else waiting
            ready = await self._ready(route, key, entry)
            if ready is None:
                continue
            self._busy.add(key)
            self._held.add(key)
            self._spawn(self._take(pipeline, route, entry, key, ready))
            taken += 1
            if taken >= self.settings.daemon.max_claims_per_poll:
                self._recheck_in_s = min(self._recheck_in_s, 0.2)  # the rest: right after
                break
        return 0

    def _waits(self, route: RouteSettings, key: str, entry: RemoteEntry) -> bool:
        """Whether a listed file is one to take, now or later (not ours, not left alone)."""
        name = sort_name(entry.name, route.pattern)
        if key in self._busy or name is Name.ignored or self._is_refused(key, entry):
            return False
        if name is Name.unmatched and route.unmatched == "ignore":
            if self._ignored.is_new(key, entry):
                self.health.unmatched.labels(route.name, "ignore").inc()
            return False
        return True

    async def _ready(self, route: RouteSettings, key: str, entry: RemoteEntry) -> _Ready | None:
        """Whether to take a listed file now, and as what; None: leave it (for now)."""
        if not self._waits(route, key, entry):
            return None
        self._settling.add(route.inbox_path)  # a file still here to take: list afresh next time
        name = sort_name(entry.name, route.pattern)
        unchanged_s = self._gate.observe(key, entry)
        settle_s = self.settings.daemon.settle_s
        if unchanged_s <= 0 or unchanged_s < settle_s:
            # Come back as soon as it may be settled, not a whole poll interval later.
            self._recheck_in_s = min(self._recheck_in_s, max(0.2, settle_s - unchanged_s))
            return None
        if name is Name.unmatched:
            return Name.unmatched  # settled; what it holds does not matter
        verdict = await self._probe_contained(key, entry)
        if verdict is ZipVerdict.incomplete and (
            unchanged_s < self.settings.daemon.incomplete_timeout_s
        ):
            return None
        return verdict

    def _room(self, inbox: str) -> int:
        """How many more files this daemon may claim now from ``inbox`` (``max_in_flight``).

        With several inboxes, one may hold at most half: files stuck in one (a folder they
        cannot be settled in) never starve the others. The ledger is asked once per pass
        (``_in_hand``); claims made since are in ``_busy``.
        """
        limit = self.settings.daemon.max_in_flight
        in_hand = self._in_hand
        busy = len(self._held)
        mine = in_hand.get(inbox, 0) + sum(key.startswith(inbox + "/") for key in self._held)
        share = limit if len(self._access_ok) <= 1 else max(1, limit // 2)
        room = min(limit - sum(in_hand.values()) - busy, share - mine)
        if room <= 0 and not self._full:
            log.warning(
                "daemon.in_flight_full",
                max_in_flight=limit,
                advice="new files wait in their inboxes, oldest first, until some settle",
            )
        self._full = room <= 0
        return max(0, room)

    async def _probe_contained(self, key: str, entry: RemoteEntry) -> ZipVerdict | None:
        """The completeness check of one file; its failure is that file's, not the loop's."""
        try:
            return await self._probe(key, entry)
        except SourceUnavailableError:
            raise  # the server, not the file: the whole pass waits
        except SkipFileError as exc:
            self._gate.forget(key)
            log.info("file.vanished_before_claim", file=key, error=str(exc))
        except SourceRefusedError as exc:
            # Listed but not readable (its own permissions): claim it all the same, so that the
            # flow rejects it with a receipt that says why (pipeline._failed_step), rather than
            # leave it in the inbox and warn about it every poll.
            log.warning("file.probe_refused", file=key, error=str(exc))
            return ZipVerdict.complete
        except WatcherError as exc:
            log.warning("file.probe_failed", file=key, error=str(exc))
        except Exception:
            log.exception("file.probe_crashed", file=key)
        return None

    async def _probe(self, path: str, entry: RemoteEntry) -> ZipVerdict:
        head, tail = await self._source.read_ends(path, entry.size_bytes, 8, TAIL_BYTES)
        return check_zip(head, tail, entry.size_bytes)

    async def _take(
        self,
        pipeline: Pipeline,
        route: RouteSettings,
        entry: RemoteEntry,
        key: str,
        verdict: _Ready,
    ) -> None:
        try:
            if verdict is Name.unmatched:
                record = await pipeline.intake_unmatched(route, entry)
            else:
                record = await pipeline.intake(route, entry, verdict)
        except SourceRefusedError as exc:
            self._count_refusal(key, entry, str(exc))
            return
        finally:
            self._busy.discard(key)
            self._gate.forget(key)
        if record is None:
            return  # another actor took it
        if record.state is FileState.claiming:
            self._count_refusal(key, entry, record.reason or "the claim was interrupted")
        await pipeline.drive(record)

    def _is_refused(self, key: str, entry: RemoteEntry) -> bool:
        refused = self._refusals.get(key)
        if refused is None:
            return False
        if refused[0] != entry:
            del self._refusals[key]  # the file changed: give it a fresh chance
            return False
        return refused[1] >= _MAX_CLAIM_ATTEMPTS

    def _count_refusal(self, key: str, entry: RemoteEntry, error: str) -> None:
        """A poison file (say, one we may not rename) is tried a few times, never forever."""
        _, count = self._refusals.get(key, (entry, 0))
        self._refusals[key] = (entry, count + 1)
        if count + 1 < _MAX_CLAIM_ATTEMPTS:
            log.warning("file.claim_failed", file=key, attempt=count + 1, error=error)
            return
        log.error(
            "file.claim_refused",
            file=key,
            attempts=count + 1,
            error=error,
            advice="the daemon's user must be allowed to move files out of this inbox; the "
            "file stays there and is tried again when it changes or the daemon restarts",
        )

    async def _drain(self) -> None:
        if not self._tasks:
            return
        grace_s = self.settings.daemon.shutdown_grace_s
        log.info("daemon.draining", files=len(self._tasks), grace_s=grace_s)
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
