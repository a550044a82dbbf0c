"""What the control plane reports: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from watcher import __version__
from watcher.ledger import Ledger
from watcher.settings import Settings

__all__ = ("Health",)


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
        checks = {
            "listing": listing_s < listing_limit_s,
            "isales": api_s < api_limit_s,
            "ledger": ledger_ok,
            "validation": self.validation_ok(),
        }
        details: dict[str, Any] = {
            "checks": checks,
            "last_listing_s": None if listing_s == float("inf") else round(listing_s, 1),
            "last_isales_call_s": None if api_s == float("inf") else round(api_s, 1),
        }
        return all(checks.values()), details
