"""The status page of the control plane: what the ledger and the health say, on one page.

Read-only and server-rendered (Jinja2, escaping on for everything: file names are user input).
Every file that needs an operator comes first, with the exact command that settles it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from watcher import __version__
from watcher.health import Health
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, escaped
from watcher.settings import DEFAULT_CONFIG, Settings
from watcher.settle import written_receipt_text

if TYPE_CHECKING:
    import jinja2

__all__ = ("REFRESH_S", "StatusPage", "StatusView", "gather")

REFRESH_S = 10
_FILE_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
_SHOWN = 50  # rows per table: a page, not a report (ledger list has the rest)
_SETTLED = (FileState.done, FileState.rejected, FileState.lost)
_ATTENTION = (FileState.uncertain, FileState.parked)
_VERDICTS = {FileState.done: "imported", FileState.rejected: "rejected", FileState.lost: "lost"}
_WITH_RECEIPT = (FileState.done, FileState.rejected, FileState.uncertain)


@dataclass(frozen=True, slots=True)
class RouteRow:
    name: str
    inbox: str
    listed: str  # "12 s ago", or "not yet"
    problem: str | None


@dataclass(frozen=True, slots=True)
class FileRow:
    id: str
    name: str
    route: str
    state: str
    verdict: str
    age: str  # since it was received
    changed: str  # since its state last changed
    reason: str
    receipt: bool
    commands: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusView:
    """Everything the page shows, gathered at one instant."""

    generated_at: str
    version: str
    refresh_s: int
    routes: tuple[RouteRow, ...]
    counts: tuple[tuple[str, int], ...]
    attention: tuple[FileRow, ...]
    in_flight: tuple[FileRow, ...]
    more_in_flight: int  # in flight beyond the rows shown (the oldest are shown)
    settled: tuple[FileRow, ...]


def _negated(at: str) -> float:
    """A sort key that puts the latest time first."""
    return -datetime.fromisoformat(at).timestamp()


def _ago(then: str | None, now: datetime) -> str:
    if then is None:
        return "not yet"
    seconds = max(0, int((now - datetime.fromisoformat(then)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _commands(record: FileRecord, config: str) -> tuple[str, ...]:
    """The commands that settle a file waiting for an operator, ready to paste."""
    if record.state is FileState.parked:
        actions = [f"unpark {record.id}"]
    elif record.import_task_id is not None:  # iSales acknowledged it: only its task settles it
        actions = [f"resolve {record.id} --imported {record.import_task_id}"]
    else:
        actions = [f"resolve {record.id} --imported TASK_ID", f"resolve {record.id} --not-imported"]
    return tuple(f'isales-watcher ledger {action} --reason "..."{config}' for action in actions)


def _file_row(record: FileRecord, now: datetime, config: str) -> FileRow:
    return FileRow(
        id=record.id,
        name=record.shown_name,
        route=record.route,
        state=record.state.value,
        verdict=_VERDICTS.get(record.state, record.state.value),
        age=_ago(record.created_at, now),
        changed=_ago(record.updated_at, now),
        reason=escaped(record.reason or ""),
        receipt=record.state in _WITH_RECEIPT,
        commands=_commands(record, config) if record.state in _ATTENTION else (),
    )


def _route_rows(settings: Settings, health: Health, now: datetime) -> tuple[RouteRow, ...]:
    seen = {route.name: route for route in health.routes()}
    problems = health.route_problems()
    rows = []
    for route in seen.values():
        listed = f"{_ago(route.listed_at_utc, now)} ago" if route.listed_at_utc else "not yet"
        problem = problems.get(route.name) or (f"failing: {route.error}" if route.error else None)
        shown = escaped(problem) if problem else None
        rows.append(RouteRow(route.name, escaped(route.inbox), listed, shown))
    # A configured route the daemon has not listed yet (a template: its folders, once seen).
    rows.extend(
        RouteRow(route.name, route.inbox, "not yet", None)
        for route in settings.routes
        if route.name not in seen and not any(n.startswith(route.name + "/") for n in seen)
    )
    return tuple(sorted(rows, key=lambda row: row.name))


def gather(
    settings: Settings, ledger: Ledger, health: Health, *, config_path: Path | None = None
) -> StatusView:
    """Read the page's facts from the ledger and the health, in a few short queries."""
    now = datetime.now(UTC)
    config = (
        f" --config {shlex.quote(str(config_path.absolute()))}"
        if config_path is not None and config_path != DEFAULT_CONFIG
        else ""
    )
    counts = ledger.counts()
    # Uncertain first (whether it was imported is in doubt), then parked; the latest first.
    attention = sorted(
        ledger.search(states=_ATTENTION, limit=_SHOWN),
        key=lambda r: (r.state is not FileState.uncertain, _negated(r.updated_at)),
    )
    in_flight = ledger.unfinished()
    return StatusView(
        generated_at=now.isoformat(timespec="seconds"),
        version=__version__,
        refresh_s=REFRESH_S,
        routes=_route_rows(settings, health, now),
        counts=tuple((state.value, counts[state]) for state in FileState if state in counts),
        attention=tuple(_file_row(r, now, config) for r in attention),
        in_flight=tuple(_file_row(r, now, config) for r in in_flight[:_SHOWN]),
        more_in_flight=max(0, len(in_flight) - _SHOWN),
        settled=tuple(_file_row(r, now, config) for r in ledger.latest(_SETTLED, limit=_SHOWN)),
    )


class StatusPage:
    """Renders the page, and the receipt texts it links to."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        health: Health,
        *,
        config_path: Path | None = None,
    ) -> None:
        self._settings = settings
        self._ledger = ledger
        self._health = health
        self._config_path = config_path
        self._template: jinja2.Template | None = None
        self.stylesheet = (
            resources.files("watcher").joinpath("templates/status.css").read_text("utf-8")
        )

    def render(self) -> str:
        """The page as it is now."""
        view = gather(self._settings, self._ledger, self._health, config_path=self._config_path)
        return self._page().render(view=view)

    def _page(self) -> jinja2.Template:
        """The template, loaded when the page is first asked for: Jinja2 weighs some 9 MB that
        a daemon nobody looks at need not carry."""
        if self._template is None:
            import jinja2

            templates = jinja2.Environment(
                loader=jinja2.PackageLoader("watcher", "templates"),
                autoescape=True,  # every template, whatever its name: names are user input
                undefined=jinja2.StrictUndefined,
                trim_blocks=True,
                lstrip_blocks=True,
            )
            self._template = templates.get_template("status.html.j2")
        return self._template

    def receipt(self, file_id: str) -> str | None:
        """The text receipt of a file, or None (no such file, or no receipt written).

        Only a ledger id is taken, never a path: the text is rebuilt from the file's row by
        the function that wrote it, so that it is the same text.
        """
        if not _FILE_ID.fullmatch(file_id):
            return None
        try:
            record = self._ledger.get(file_id)
        except KeyError:
            return None
        if record.state not in _WITH_RECEIPT:
            return None
        route = self._settings.route(record.route, record.campaign_id)
        return written_receipt_text(record, route.receipt_language if route else "en")
