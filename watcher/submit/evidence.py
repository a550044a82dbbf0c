"""Whether an import task is provably the one our lost ``uploadFileServer`` created.

iSales tasks carry no file name, so ownership is proven by facts alone (SPEC section 3): the task
began inside a window bounded on both sides around our POST; once finished, its record count
equals the data rows validation counted (``records_match``: the one place the count rule lives);
and it is the only task that fits. A task that also fits another unresolved file is that file's
candidate too, so neither takes it. Pure functions: no I/O, no clock but the ``now`` given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from watcher.models import ImportTask

__all__ = (
    "Claimant",
    "Placed",
    "Verdict",
    "Window",
    "judge",
    "place_time",
    "records_match",
    "records_of",
)

# Our clock and the server's, both read to the second: a task may seem to begin a little early.
SLACK = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Window:
    """When, on our clock, the import task of a submission can have begun."""

    opens_at: datetime
    closes_at: datetime

    def contains(self, at: datetime) -> bool:
        return self.opens_at <= at <= self.closes_at

    def as_json(self) -> list[str]:
        return [self.opens_at.isoformat(), self.closes_at.isoformat()]

    @classmethod
    def from_json(cls, data: Any) -> Window | None:
        try:
            opens, closes = (datetime.fromisoformat(text) for text in data)
        except (TypeError, ValueError):
            return None
        return cls(opens, closes)

    @classmethod
    def around(
        cls,
        sent_at: datetime,
        ended_at: datetime,
        *,
        after: timedelta,
        scheduled_at: datetime | None = None,
    ) -> Window:
        """From the POST's start to ``after`` past its end; a scheduled import at its hour."""
        if scheduled_at is not None:
            return cls(scheduled_at - SLACK, scheduled_at + after)
        return cls(sent_at - SLACK, ended_at + after)


class Placed(StrEnum):
    """Why a task's ``beginTime`` cannot be put on our clock."""

    not_yet = "not_yet"  # no beginTime: the task has not begun (preparing, or scheduled)
    no_zone = "no_zone"  # a time without a zone, and the server's zone is unknown
    garbage = "garbage"  # not a time at all: never taken as "new"


def place_time(text: str | None, zone: timezone | None, skew_s: float) -> datetime | Placed:
    """A server time on our clock: its zone (given, or the server's), less the clock skew."""
    if not text:
        return Placed.not_yet
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        return Placed.garbage
    if at.tzinfo is None:
        if zone is None:
            return Placed.no_zone
        at = at.replace(tzinfo=zone)
    return at - timedelta(seconds=skew_s)


def records_of(task: ImportTask) -> int | None:
    """The records a finished task reports, or None while they are not final (or unusable)."""
    if not task.is_finished:
        return None
    counts = (task.succ_num, task.repeat_num, task.fail_num, task.black_num)
    if all(count is None for count in counts) or any((c or 0) < 0 for c in counts):
        return None
    return sum(count or 0 for count in counts)


def records_match(records: int, rows: int) -> bool:
    """The count rule: iSales makes one record of each data row (succ + repeat + fail + black)."""
    return records == rows


@dataclass(frozen=True, slots=True)
class Claimant:
    """Another file of the campaign whose submission's outcome is unknown: it may own a task."""

    file_id: str
    window: Window
    rows: int | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the facts say about one lost answer."""

    task: ImportTask | None  # adopt this one
    waiting: bool  # a candidate is not final yet: look again later
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Sorted:
    fits: list[tuple[ImportTask, datetime, int | None]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # in the window, counts not final
    uncounted: list[str] = field(default_factory=list)  # in the window, ended without counts
    not_begun: list[str] = field(default_factory=list)
    no_zone: list[str] = field(default_factory=list)
    misfits: list[str] = field(default_factory=list)  # in the window, another record count
    others: list[str] = field(default_factory=list)  # unowned, outside the window


def _sort(
    tasks: Iterable[ImportTask],
    window: Window,
    *,
    rows: int | None,
    by_counts: bool,
    zone: timezone | None,
    skew_s: float,
) -> _Sorted:
    found = _Sorted()
    for task in tasks:
        at = place_time(task.begin_time, zone, skew_s)
        if at is Placed.not_yet:
            found.not_begun.append(task.task_id)
        elif at is Placed.no_zone:
            found.no_zone.append(task.task_id)
        elif isinstance(at, datetime) and window.contains(at):
            records = records_of(task)
            if not by_counts or rows is None:
                found.fits.append((task, at, records))
            elif records is None and task.is_finished:
                found.uncounted.append(task.task_id)
            elif records is None:
                found.unfinished.append(task.task_id)
            elif records_match(records, rows):
                found.fits.append((task, at, records))
            else:
                found.misfits.append(f"{task.task_id} ({records} records)")
        elif isinstance(at, datetime):
            found.others.append(task.task_id)
        # Placed.garbage: not a time, never taken as new
    return found


def _contested_by(
    task: ImportTask, at: datetime, records: int | None, claimants: Iterable[Claimant]
) -> list[str]:
    """Other unresolved files this task could belong to."""
    return [
        c.file_id
        for c in claimants
        if c.window.contains(at)
        and (records is None or c.rows is None or records_match(records, c.rows))
    ]


def judge(
    tasks: Iterable[ImportTask],
    *,
    window: Window,
    rows: int | None,
    by_counts: bool,
    owned: set[str],
    claimants: Iterable[Claimant],
    zone: timezone | None,
    skew_s: float,
    now: datetime,
    complete: bool = True,
) -> Verdict:
    """Adopt the one task that provably is ours, wait for one that may become so, or give up.

    ``by_counts`` off (or no row count known) falls back to the window alone, which then also
    demands that no other unowned task is in the campaign's listing.
    """
    claimants = list(claimants)
    unowned = [t for t in tasks if t.task_id not in owned]
    counting = by_counts and rows is not None
    found = _sort(unowned, window, rows=rows, by_counts=counting, zone=zone, skew_s=skew_s)
    evidence: dict[str, Any] = {
        "window": window.as_json(),
        "rows": rows,
        "rule": "window and record count" if counting else "window only",
        "candidates": [t.task_id for t, _, _ in found.fits],
    }
    for key in ("unfinished", "uncounted", "not_begun", "no_zone", "misfits"):
        if getattr(found, key):
            evidence[key] = getattr(found, key)
    # A task that has not begun yet may still begin inside the window, until it closes.
    if now > window.closes_at:
        found.not_begun.clear()
    why_not = _unclear(found) or _doubt(found, counting, rows, complete, claimants)
    if why_not is not None:
        return Verdict(None, bool(found.unfinished or found.not_begun), why_not, evidence)
    task, _, records = found.fits[0]
    evidence.update(task_id=task.task_id, begin_time=task.begin_time, records=records)
    return Verdict(task, False, _adopted(task, records, rows, counting), evidence)


def _unclear(found: _Sorted) -> str | None:
    """Why the listing cannot be judged yet (or at all), if it cannot."""
    if found.no_zone:
        return (
            f"tasks {', '.join(found.no_zone[:3])} have a beginTime without a time zone and the "
            "server's zone is unknown; set isales.server_utc_offset"
        )
    if found.unfinished or found.not_begun:
        pending = (found.unfinished + found.not_begun)[:3]
        return f"waiting for task {', '.join(pending)} to begin and finish"
    if found.uncounted:
        return (
            f"task {', '.join(found.uncounted[:3])} in its time window ended without usable "
            "record counts, so whose it is cannot be told"
        )
    return None


def _doubt(
    found: _Sorted,
    counting: bool,
    rows: int | None,
    complete: bool,
    claimants: list[Claimant],
) -> str | None:
    """Why the one fitting task, if there is one, is still not provably ours."""
    if len(found.fits) != 1:
        return _no_fit(found, counting, rows)
    task, at, records = found.fits[0]
    if not complete:
        return (
            f"task {task.task_id} fits, but the campaign's task listing could not be read to its "
            "end, so another fitting task may be hidden"
        )
    if not counting and found.others:
        return (
            f"task {task.task_id} is in the time window, but {len(found.others)} other unowned "
            "tasks exist in the campaign and record counts are not compared "
            "(isales.reconcile_by_counts = false)"
        )
    rivals = _contested_by(task, at, records if counting else None, claimants)
    if rivals:
        return (
            f"task {task.task_id} fits, but it could also belong to file {', '.join(rivals)}, "
            "whose answer was lost too"
        )
    return None


def _no_fit(found: _Sorted, counting: bool, rows: int | None) -> str:
    if found.fits:
        listed = ", ".join(t.task_id for t, _, _ in found.fits[:3])
        return f"{len(found.fits)} unowned tasks fit its time window ({listed})"
    if found.misfits:
        return (
            f"no task in its time window has {rows} records, one per data row "
            f"(seen: {', '.join(found.misfits[:3])})"
        )
    return "no unowned import task began in its time window"


def _adopted(task: ImportTask, records: int | None, rows: int | None, counting: bool) -> str:
    if counting:
        return (
            f"matched after a lost answer: task {task.task_id}, begun at {task.begin_time}, "
            f"{records} records = {rows} rows"
        )
    return (
        f"matched after a lost answer: task {task.task_id}, begun at {task.begin_time}, "
        "the only unowned task in its time window"
    )


def claimants_of(records: Iterable[Mapping[str, Any]]) -> list[Claimant]:
    """Claimants from (file_id, window JSON, rows) mappings, skipping those without a window."""
    found = []
    for item in records:
        window = Window.from_json(item.get("window"))
        if window is not None:
            found.append(Claimant(str(item["file_id"]), window, item.get("rows")))
    return found
