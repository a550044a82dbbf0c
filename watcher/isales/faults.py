"""Misbehaviour the iSales emulator can be told to show, call by call or at random."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

__all__ = ("Fault", "FaultKind", "FaultPlan")


class FaultKind(StrEnum):
    """What goes wrong with one call."""

    status = "status"  # answer this HTTP status (401, 429, 503, 502...) and do nothing
    delay = "delay"  # wait delay_s, then act and answer normally
    drop_after_accept = "drop_after_accept"  # act, then drop the connection without an answer
    accept_then_502 = "accept_then_502"  # act, then answer 502 with an HTML body
    fail_import = "fail_import"  # accept the import; the task ends "3" with err_msg
    slow_import = "slow_import"  # accept the import; the task stays "1" for delay_s
    skew = "skew"  # answer normally with a Date header skew_s off
    broken_body = "broken_body"  # act, then answer 200 with a body that is not JSON


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour."""

    kind: FaultKind
    status: int = 503
    retry_after_s: float | None = None
    delay_s: float = 0.0
    err_msg: str = "file format error"
    skew_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        """From the command line: ``503``, ``429:2`` (Retry-After), ``delay:5``, ``fail_import``…"""
        name, _, argument = text.partition(":")
        if name.isdigit():
            return cls(
                FaultKind.status,
                status=int(name),
                retry_after_s=float(argument) if argument else None,
            )
        kind = FaultKind(name)
        if kind in (FaultKind.delay, FaultKind.slow_import):
            return cls(kind, delay_s=float(argument or 5))
        if kind is FaultKind.skew:
            return cls(kind, skew_s=float(argument or 300))
        if kind is FaultKind.fail_import:
            return cls(kind, err_msg=argument or "file format error")
        return cls(kind)


# The faults chaos draws from, for each endpoint (import faults make sense only for uploads).
_CHAOS: dict[str, tuple[Fault, ...]] = {
    "upload": (
        Fault(FaultKind.status, status=503),
        Fault(FaultKind.status, status=429, retry_after_s=0.2),
        Fault(FaultKind.status, status=500),
        Fault(FaultKind.drop_after_accept),
        Fault(FaultKind.accept_then_502),
        Fault(FaultKind.fail_import),
        Fault(FaultKind.slow_import, delay_s=1.0),
        Fault(FaultKind.delay, delay_s=0.3),
    ),
    "query_tasks": (
        Fault(FaultKind.status, status=503),
        Fault(FaultKind.status, status=429, retry_after_s=0.1),
        Fault(FaultKind.accept_then_502),
        Fault(FaultKind.drop_after_accept),
    ),
    "query_server": (Fault(FaultKind.status, status=503),),
}


class FaultPlan:
    """Faults to apply, per endpoint (``upload``, ``query_tasks``, ``query_server``, or ``*``).

    Scripted faults are used first, in order; then, with chaos on, each call misbehaves with
    the given probability, drawn from a seeded generator so that a run can be repeated.
    """

    def __init__(self) -> None:
        self._scripted: dict[str, deque[Fault]] = {}
        self._chaos_rate = 0.0
        self._random = random.Random(0)

    def script(self, endpoint: str, *faults: Fault) -> None:
        self._scripted.setdefault(endpoint, deque()).extend(faults)

    def chaos(self, rate: float, seed: int) -> None:
        self._chaos_rate = rate
        self._random = random.Random(seed)

    def next_fault(self, endpoint: str) -> Fault | None:
        for key in (endpoint, "*"):
            queue = self._scripted.get(key)
            if queue:
                return queue.popleft()
        if self._chaos_rate and self._random.random() < self._chaos_rate:
            return self._random.choice(_CHAOS[endpoint])
        return None
