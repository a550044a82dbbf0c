"""The daemon's life cycle: start, recover, watch the inboxes, drain on SIGTERM, close."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from watcher.errors import (
    ConfigError,
    HostKeyError,
    LedgerBusyError,
    LedgerError,
    SourceUnavailableError,
    TransientError,
    WatcherError,
)
from watcher.gate import (
    StabilityGate,
)
from watcher.health import Health
from watcher.intake import Intake
from watcher.isales.client import IsalesClient, choose_server
from watcher.ledger import Ledger, StateLock, utc_now
from watcher.models import FileState
from watcher.notify import Notifier
from watcher.pipeline import Pipeline
from watcher.settings import Settings
from watcher.sources import Source, make_source
from watcher.sources.lease import InboxLeases
from watcher.status import StatusPage
from watcher.validate.pool import CheckLimits, ValidationPool

if TYPE_CHECKING:
    from watcher.control import ControlServer

__all__ = ("Daemon",)

# How long a ledger write waits for another process's before the step is left for later: the
# wait blocks the event loop.
_LEDGER_WAIT_MS = 1000

log = structlog.get_logger(__name__)

_MAX_BACKOFF_S = 300.0
_T = TypeVar("_T")


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
        self._intake: Intake | None = None
        self._control: ControlServer | None = None
        self._api_probe: asyncio.Task[None] | None = None
        self._leases = InboxLeases(
            self._source,
            interval_s=settings.daemon.lease_interval_s,
            stale_after=settings.daemon.lease_stale_after,
        )
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
            _control_server(self.health, daemon.control_listen, page)
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
        intake = self._intake = Intake(
            self.settings,
            self._source,
            gate=self._gate,
            leases=self._leases,
            health=self.health,
            spawn=self._spawn,
        )
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
            if changed is not None:
                changed.clear()
            try:
                await intake.pass_over(pipeline)
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
                await self._pause(max(0.0, intake.recheck_in_s - (loop.time() - began)), changed)

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

    async def _drain(self) -> None:
        if not self._tasks:
            return
        grace_s = self.settings.daemon.shutdown_grace_s
        log.info("daemon.draining", files=len(self._tasks), grace_s=grace_s)
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _control_server(health: Health, listen: str, page: StatusPage) -> ControlServer:
    """The status page and probes' server; its web framework is imported only when it serves."""
    from watcher.control import ControlServer  # aiohttp.web: ~1.5 MB a daemon without it spares

    return ControlServer(health, listen, page=page)
