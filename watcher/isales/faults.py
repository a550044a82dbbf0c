"""Misbehaviour the iSales emulator can be told to show, call by call or at random."""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = (
    "ENDPOINTS",
    "SHAPES",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "fault_forms",
    "gateway_status",
    "reshape",
)

# The calls a fault may be scripted for ("*": whichever comes next).
ENDPOINTS = ("upload", "query_tasks", "query_server", "*")


class FaultKind(StrEnum):
    """What goes wrong with one call."""

    status = "status"  # answer this HTTP status (401, 429, 503, 502...) and do nothing
    delay = "delay"  # wait delay_s, then act and answer normally
    drop_after_accept = "drop_after_accept"  # act, then drop the connection without an answer
    accept_then_502 = "accept_then_502"  # act, then answer 502 with an HTML body
    accept_then_503 = "accept_then_503"  # act, then answer 503 with an HTML body
    accept_then_504 = "accept_then_504"  # act, then answer 504 with an HTML body
    accept_then_status = "accept_then_status"  # act, then answer ``status`` with an HTML body
    fail_import = "fail_import"  # accept the import; the task ends "3" with err_msg
    slow_import = "slow_import"  # accept the import; the task stays "1" for delay_s
    skew = "skew"  # answer normally with a Date header skew_s off
    broken_body = "broken_body"  # act, then answer 200 with a body that is not JSON
    redirect = "redirect"  # answer 302 to ``location`` (default: the same path, a loop); no act
    reject_4xx = "reject_4xx"  # answer HTTP 400 with a JSON envelope "0200001"; do nothing
    # Shapes: act, then answer 200 "0200000" with a reply of an unexpected shape.
    null_server = "null_server"  # the ``server`` list starts with a null entry
    string_list = "string_list"  # ``server`` / ``result`` is a string (the list's JSON text)
    bad_count = "bad_count"  # ``count`` is "many"
    bad_begin_time = "bad_begin_time"  # every task's ``beginTime`` is the number 12345


_GATEWAY = {
    FaultKind.accept_then_502: 502,
    FaultKind.accept_then_503: 503,
    FaultKind.accept_then_504: 504,
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour."""

    kind: FaultKind
    status: int = 503
    retry_after_s: float | None = None
    delay_s: float = 0.0
    err_msg: str = "file format error"
    skew_s: float = 0.0
    location: str | None = None  # redirect: where to; None is the request's own path

    @classmethod
    def parse(cls, text: str) -> Fault:
        """From the command line: ``503``, ``429:2`` (Retry-After), ``delay:5``, ``fail_import``…

        Every form is listed by :func:`fault_forms`.

        Raises:
            ValueError: not a fault this emulator knows, or a bad argument; the message lists
                the faults.
        """
        name, _, argument = text.partition(":")
        if not name.isdigit() and name not in FaultKind.__members__:
            raise ValueError(f"unknown fault {name!r}; the faults are: {', '.join(fault_forms())}")
        kind = FaultKind.status if name.isdigit() else FaultKind(name)
        metavar, parse_argument = _ARGUMENTS.get(kind, ("", None))
        try:
            if kind is FaultKind.status:
                return cls(kind, status=_status(name), retry_after_s=_seconds(argument, None))
            if parse_argument is None and argument:
                raise ValueError
            return parse_argument(kind, argument) if parse_argument else cls(kind)
        except ValueError:
            form = f"{kind}:{metavar}" if metavar else f"{kind}, without an argument"
            if kind is FaultKind.status:
                form = "an HTTP status from 100 to 599, then :SECONDS of Retry-After if any"
            raise ValueError(f"{text!r}: write {form}") from None


def _status(text: str) -> int:
    status = int(text or 504)
    if not 100 <= status <= 599:
        raise ValueError(text)
    return status


def _seconds(text: str, default: float | None) -> float | None:
    if not text:
        return default
    seconds = float(text)
    if not 0 <= seconds < float("inf"):
        raise ValueError(text)
    return seconds


_ARGUMENTS: dict[FaultKind, tuple[str, Callable[[FaultKind, str], Fault]]] = {
    FaultKind.delay: ("SECONDS", lambda kind, arg: Fault(kind, delay_s=_seconds(arg, 5.0) or 0.0)),
    FaultKind.slow_import: (
        "SECONDS",
        lambda kind, arg: Fault(kind, delay_s=_seconds(arg, 5.0) or 0.0),
    ),
    FaultKind.skew: ("SECONDS", lambda kind, arg: Fault(kind, skew_s=float(arg or 300))),
    FaultKind.fail_import: (
        "MESSAGE",
        lambda kind, arg: Fault(kind, err_msg=arg or "file format error"),
    ),
    FaultKind.accept_then_status: (
        "STATUS",
        lambda kind, arg: Fault(kind, status=_status(arg)),
    ),
    FaultKind.redirect: ("PATH", lambda kind, arg: Fault(kind, status=302, location=arg or None)),
}


def fault_forms() -> list[str]:
    """Every fault as written on the command line, from the registry: ``delay[:SECONDS]``..."""
    forms = ["STATUS[:RETRY_AFTER_S] (e.g. 503, 429:2)"]
    for kind in FaultKind:
        if kind is FaultKind.status:
            continue
        metavar = _ARGUMENTS[kind][0] if kind in _ARGUMENTS else ""
        forms.append(f"{kind}[:{metavar}]" if metavar else str(kind))
    return forms


def gateway_status(fault: Fault) -> int | None:
    """The status an ``accept_then_*`` fault answers after acting; ``None`` for other faults."""
    if fault.kind is FaultKind.accept_then_status:
        return fault.status
    return _GATEWAY.get(fault.kind)


def _null_server(body: dict[str, Any]) -> None:
    if isinstance(body.get("server"), list):
        body["server"] = [None, *body["server"]]
        if isinstance(body.get("count"), int):
            body["count"] += 1


def _string_list(body: dict[str, Any]) -> None:
    for key in ("server", "result"):
        if isinstance(body.get(key), list):
            body[key] = json.dumps(body[key])  # as a server that encodes its list twice


def _bad_count(body: dict[str, Any]) -> None:
    if "count" in body:
        body["count"] = "many"


def _bad_begin_time(body: dict[str, Any]) -> None:
    for task in body.get("result") or []:
        task["beginTime"] = 12345


_SHAPES: dict[FaultKind, Callable[[dict[str, Any]], None]] = {
    FaultKind.null_server: _null_server,
    FaultKind.string_list: _string_list,
    FaultKind.bad_count: _bad_count,
    FaultKind.bad_begin_time: _bad_begin_time,
}
SHAPES = frozenset(_SHAPES)  # the faults that answer 200 with an unexpected shape


def reshape(kind: FaultKind, body: dict[str, Any]) -> dict[str, Any]:
    """A copy of a reply body, bent the way a shape fault says (unchanged for other kinds)."""
    bent: dict[str, Any] = json.loads(json.dumps(body))
    shape = _SHAPES.get(kind)
    if shape is not None:
        shape(bent)
    return bent


# The faults chaos draws from, for each endpoint (import faults make sense only for uploads).
_CHAOS: dict[str, tuple[Fault, ...]] = {
    "upload": (
        Fault(FaultKind.status, status=503),
        Fault(FaultKind.status, status=429, retry_after_s=0.2),
        Fault(FaultKind.status, status=500),
        Fault(FaultKind.drop_after_accept),
        Fault(FaultKind.accept_then_502),
        Fault(FaultKind.accept_then_504),
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

    def clear(self) -> None:
        """Drop the scripted faults not used yet (chaos stays as it is)."""
        self._scripted.clear()

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
