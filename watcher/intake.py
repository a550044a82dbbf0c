"""Intake: the inbox side of a pass. Which inboxes to look in (a template route becomes one per
campaign folder), whether the daemon may work there (its access, the inbox lease), what is in
them (the listing cache), what is ready (the gate) and how much may be claimed now
(``max_in_flight``). What it takes is handed to the pipeline, each file in a task of its own.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import structlog

from watcher.errors import SkipFileError, SourceRefusedError, SourceUnavailableError, WatcherError
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
from watcher.models import FileState, RemoteEntry
from watcher.pipeline import Pipeline
from watcher.settings import RouteSettings, Settings, is_campaign_folder
from watcher.sources import Source, check_access
from watcher.sources.lease import InboxLeases
from watcher.sources.listing import Listings

__all__ = ("Intake",)

log = structlog.get_logger(__name__)

_MAX_CLAIM_ATTEMPTS = 3
_ACCESS_RECHECK_S = 30.0
# What a pass takes a file as: a list the gate judged, or a name the route does not take.
_Ready = ZipVerdict | Literal[Name.unmatched]


class Intake:
    """Looks in every inbox once per pass, and hands what is ready to the pipeline."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        *,
        gate: StabilityGate,
        leases: InboxLeases,
        health: Health,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.settings = settings
        self.health = health
        self._source = source
        self._gate = gate
        self._leases = leases
        self._spawn = spawn
        self.listings = Listings(source, full_every=settings.daemon.full_listing_every)
        self.recheck_in_s = settings.daemon.poll_interval_s  # when the next pass is due
        self._busy: set[str] = set()  # files being claimed
        # Asked of the ledger once per pass: files in hand, and the claims begun since.
        self._in_hand: dict[str, int] = {}
        self._held: set[str] = set()
        self._settling: set[str] = set()  # inboxes with a file still settling: list afresh
        self._refusals: dict[str, tuple[RemoteEntry, int]] = {}
        self._ignored = SeenOnce()  # unmatched files left alone, each counted once
        # Each inbox's last listing, the rule it was sorted by, and the files worth a look.
        self._looked: dict[
            str, tuple[list[RemoteEntry], tuple[str, str], list[tuple[str, RemoteEntry]]]
        ] = {}
        self._odd_folders: set[str] = set()
        self._route_errors: dict[str, str] = {}
        self._access_ok: set[str] = set()  # inboxes the daemon proved it may work in
        self._access_refused: dict[str, tuple[float, str]] = {}
        self._full = False  # max_in_flight reached (said once)

    async def pass_over(self, pipeline: Pipeline) -> None:
        """One look in every inbox.

        Raises:
            SourceUnavailableError, HostKeyError: the server, not an inbox: the pass waits.
        """
        self.recheck_in_s = self.settings.daemon.poll_interval_s
        self._in_hand, self._held = pipeline.ledger.in_hand(), set(self._busy)
        routes = await self._routes()
        for gone in self._looked.keys() - {route.inbox_path for route in routes}:
            del self._looked[gone]  # a campaign folder removed: its listing is not kept
        for route in routes:
            await self._scan_contained(pipeline, route)

    async def _routes(self) -> list[RouteSettings]:
        """The routes to scan now: template routes become one route per campaign folder."""
        routes = []
        for route in self.settings.routes:
            if not route.is_template:
                routes.append(route)
                continue
            try:
                names = await self.listings.folders(route.parent)
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
        entries = await self.listings.files(inbox, fresh=inbox in self._settling)
        self._settling.discard(inbox)
        taken = 0
        room = self._room(inbox)
        # Oldest first, and a bounded number of claims per pass: a folder of 100,000 files is
        # worked through in order instead of all at once.
        ordered = self._worth_a_look(route, entries)
        for index, (key, entry) in enumerate(ordered):
            if taken >= room:
                # The daemon has enough in hand: the rest waits in the inbox, unclaimed.
                waiting = sum(self._waits(k, e) for k, e in ordered[index:])
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
                self.recheck_in_s = min(self.recheck_in_s, 0.2)  # the rest: right after
                break
        return 0

    def _worth_a_look(
        self, route: RouteSettings, entries: list[RemoteEntry]
    ) -> list[tuple[str, RemoteEntry]]:
        """The files of an inbox's listing to look at, oldest first, with their keys.

        A name the route leaves alone (one it ignores, or does not take and ignores) is left
        once per listing: while the listing is re-used (the folder unchanged), a poll looks
        only at the others, not at 20,000 names that will never be taken.
        """
        inbox = route.inbox_path
        rule = (route.pattern, route.unmatched)
        known = self._looked.get(inbox)
        if known is not None and known[0] is entries and known[1] == rule:
            return known[2]
        keys = [posixpath.join(inbox, entry.name) for entry in entries]
        self._gate.retain(keys, inbox + "/")
        self._ignored.retain(keys, inbox + "/")
        worth = []
        for key, entry in zip(keys, entries, strict=True):
            name = sort_name(entry.name, route.pattern)
            if name is Name.ignored:
                continue
            if name is Name.unmatched and route.unmatched == "ignore":
                if self._ignored.is_new(key, entry):
                    self.health.unmatched.labels(route.name, "ignore").inc()
                continue
            worth.append((key, entry))
        worth.sort(key=lambda item: item[1].mtime)
        self._looked[inbox] = (entries, rule, worth)
        return worth

    def _waits(self, key: str, entry: RemoteEntry) -> bool:
        """Whether a file worth a look (:meth:`_worth_a_look`) is one to take, now or later:
        not being claimed already, not refused."""
        return key not in self._busy and not self._is_refused(key, entry)

    async def _ready(self, route: RouteSettings, key: str, entry: RemoteEntry) -> _Ready | None:
        """Whether to take a listed file now, and as what; None: leave it (for now)."""
        if not self._waits(key, entry):
            return None
        self._settling.add(route.inbox_path)  # a file still here to take: list afresh next time
        name = sort_name(entry.name, route.pattern)
        unchanged_s = self._gate.observe(key, entry)
        settle_s = self.settings.daemon.settle_s
        if unchanged_s <= 0 or unchanged_s < settle_s:
            # Come back as soon as it may be settled, not a whole poll interval later.
            self.recheck_in_s = min(self.recheck_in_s, max(0.2, settle_s - unchanged_s))
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
