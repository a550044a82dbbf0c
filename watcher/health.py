"""What the control plane reports: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from watcher import __version__
from watcher.ledger import Ledger
from watcher.settings import Settings

__all__ = ("Health", "RouteHealth")


@dataclass(slots=True)
class RouteHealth:
    """What the daemon last saw of one route's inbox (a template route: of each campaign's)."""

    name: str
    inbox: str
    listed_at: float | None = None  # the last good listing, on the monotonic clock
    listed_at_utc: str | None = None  # the same, for people
    error: str | None = None  # why the last listing failed, if it did
    refused: bool = False  # the inbox failed the access check (the error says why)
    starved_since: float | None = None  # files wait in it and there is no room to claim them
    waiting_files: int = 0


class _LedgerCollector(Collector):
    """Files by state and the age of the oldest file in each, read from the ledger at scrape."""

    def __init__(self, ledger: Ledger, waiting: Callable[[], tuple[int, float]]) -> None:
        self._ledger = ledger
        self._waiting = waiting

    def collect(self) -> Iterator[GaugeMetricFamily]:
        files = GaugeMetricFamily(
            "isales_watcher_files", "Files in the ledger, by state", labels=["state"]
        )
        oldest = GaugeMetricFamily(
            "isales_watcher_oldest_in_state_seconds",
            "How long the file longest in each unfinished state has been there",
            labels=["state"],
        )
        now = datetime.now(UTC)
        for state, count, since in self._ledger.state_summary():
            files.add_metric([state], count)
            if since is not None:
                oldest.add_metric([state], (now - datetime.fromisoformat(since)).total_seconds())
        yield files
        yield oldest
        count, age_s = self._waiting()
        yield GaugeMetricFamily(
            "isales_watcher_waiting_files",
            "Files seen in an inbox that are not ready yet",
            value=count,
        )
        yield GaugeMetricFamily(
            "isales_watcher_oldest_waiting_seconds",
            "How long the oldest unready file has been waiting",
            value=age_s,
        )


class Health:
    """The daemon's parts report their successes here; probes and metrics read them."""

    def __init__(
        self, settings: Settings, ledger: Ledger, waiting: Callable[[], tuple[int, float]]
    ) -> None:
        self._settings = settings
        self._ledger = ledger
        self._clock = time.monotonic
        started = self._clock()
        self._beat_at = started
        self._listing_ok_at: float | None = None
        self._api_ok_at: float | None = None
        self._routes: dict[str, RouteHealth] = {}
        self.validation_ok: Callable[[], bool] = lambda: True  # a checker can be started
        self.source_stalled_s: Callable[[], float] = lambda: 0.0  # a file system call hangs
        self.registry = CollectorRegistry()
        self.api_seconds = Histogram(
            "isales_watcher_api_seconds",
            "iSales OpenAPI call latency",
            ["call", "outcome"],
            registry=self.registry,
        )
        self.validation_seconds = Histogram(
            "isales_watcher_validation_seconds",
            "Time to validate one file",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.retries = Counter(
            "isales_watcher_step_retries_total",
            "Steps that failed and will be tried again",
            ["state"],
            registry=self.registry,
        )
        self.unmatched = Counter(
            "isales_watcher_unmatched_files_total",
            "Files in an inbox whose name does not fit the route's pattern, by what was done: "
            "reject (answered in rejected/) or ignore (left alone)",
            ["route", "action"],
            registry=self.registry,
        )
        Gauge(
            "isales_watcher_build_info",
            "The running version (the value is always 1)",
            ["version", "python"],
            registry=self.registry,
        ).labels(__version__, platform.python_version()).set(1)
        self.registry.register(_LedgerCollector(ledger, waiting))

    def beat(self) -> None:
        """The watch loop went round once."""
        self._beat_at = self._clock()

    def listing_ok(self) -> None:
        self._listing_ok_at = self._clock()

    def _route(self, name: str, inbox: str) -> RouteHealth:
        return self._routes.setdefault(name, RouteHealth(name, inbox))

    def route_listed(self, name: str, inbox: str, *, waiting_for_room: int) -> None:
        """A good listing of the route's inbox; ``waiting_for_room``: files it could not claim
        because ``max_in_flight`` was reached."""
        route = self._route(name, inbox)
        route.listed_at = self._clock()
        route.listed_at_utc = datetime.now(UTC).isoformat(timespec="seconds")
        route.error, route.refused = None, False
        route.waiting_files = waiting_for_room
        if not waiting_for_room:
            route.starved_since = None
        elif route.starved_since is None:
            route.starved_since = route.listed_at

    def route_failed(self, name: str, inbox: str, error: str, *, refused: bool) -> None:
        """The route's inbox could not be listed; ``refused``: it failed the access check."""
        route = self._route(name, inbox)
        route.error, route.refused = error, refused

    def routes(self) -> list[RouteHealth]:
        """Every route seen so far, by name."""
        return sorted(self._routes.values(), key=lambda route: route.name)

    def route_problems(self) -> dict[str, str]:
        """Routes that are refused, or starved for longer than a few polls, with why."""
        starve_limit_s = max(60.0, 10 * self._settings.daemon.poll_interval_s)
        now = self._clock()
        problems = {}
        for route in self._routes.values():
            if route.refused:
                problems[route.name] = f"refused: {route.error}"
            elif route.starved_since is not None and now - route.starved_since > starve_limit_s:
                files = route.waiting_files
                problems[route.name] = (
                    f"starved: {files} file{' waits' if files == 1 else 's wait'} in "
                    f"{route.inbox} for {now - route.starved_since:.0f} s; max_in_flight is "
                    "reached"
                )
        return problems

    def api_call(self, call: str, seconds: float, ok: bool) -> None:
        self.api_seconds.labels(call, "ok" if ok else "failed").observe(seconds)
        if ok:
            self._api_ok_at = self._clock()

    def api_age_s(self) -> float:
        return float("inf") if self._api_ok_at is None else self._clock() - self._api_ok_at

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the watch loop goes round (every operation has a deadline, so it must)."""
        daemon = self._settings.daemon
        limit_s = max(60.0, 5 * daemon.poll_interval_s) + self._settings.sftp.op_timeout_s
        age_s = self._clock() - self._beat_at
        # A call stuck in the kernel (a hung NFS mount) is not cancelled by its deadline: the
        # loop goes on, but the daemon is not well either.
        stalled_s = self.source_stalled_s()
        stall_limit_s = 2 * self._settings.sftp.op_timeout_s
        details = {"loop_age_s": round(age_s, 1), "limit_s": limit_s}
        if stalled_s:
            details["file_system_call_stalled_s"] = round(stalled_s, 1)
        return age_s < limit_s and stalled_s < stall_limit_s, details

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: a good listing and a good iSales call recently, and a writable ledger."""
        daemon = self._settings.daemon
        listing_limit_s = 3 * daemon.poll_interval_s + self._settings.sftp.op_timeout_s
        api_limit_s = 2 * daemon.api_probe_s
        listing_s = (
            float("inf") if self._listing_ok_at is None else self._clock() - self._listing_ok_at
        )
        api_s = self.api_age_s()
        ledger_ok = self._ledger.is_writable()
        routes = self.route_problems()
        checks = {
            "listing": listing_s < listing_limit_s,
            "isales": api_s < api_limit_s,
            "ledger": ledger_ok,
            "validation": self.validation_ok(),
            "routes": not routes,
        }
        details: dict[str, Any] = {
            "checks": checks,
            "last_listing_s": None if listing_s == float("inf") else round(listing_s, 1),
            "last_isales_call_s": None if api_s == float("inf") else round(api_s, 1),
        }
        if routes:
            details["routes"] = routes
        return all(checks.values()), details
