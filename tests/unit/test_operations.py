"""What operators read: the commands the README and the receipts name exist; a starved or refused
route is named by readiness and on the status page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_settings import write
from watcher.cli import _parser
from watcher.health import Health
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState
from watcher.receipt import receipt_text
from watcher.settings import load_settings
from watcher.status import StatusPage

README = Path(__file__).parents[2] / "README.md"
# A command in code: `isales-watcher ledger park ...`, not a path (/etc/isales-watcher/...).
_NAMED = re.compile(r"(?<![\w/.-])isales-watcher ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?")


def _commands() -> dict[str, set[str]]:
    """Each command of the command line, with its sub-commands (empty: it has none)."""
    parser = _parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    known = {}
    for name, sub in commands.choices.items():
        nested = [
            a for a in sub._actions if getattr(a, "choices", None) and a.dest.endswith("_command")
        ]
        known[name] = set(nested[0].choices) if nested else set()
    return known


def _unknown(text: str) -> list[str]:
    known = _commands()
    wrong = []
    for command, sub in _NAMED.findall(text):
        if command not in known or (known[command] and sub not in known[command]):
            wrong.append(f"isales-watcher {command} {sub}".strip())
    return wrong


def _code(markdown: str) -> str:
    """The README's code: fenced blocks and `inline` spans."""
    fenced = re.findall(r"```[^\n]*\n(.*?)```", markdown, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", markdown, flags=re.S))
    return "\n".join(fenced + inline)


def test_the_readme_names_only_commands_that_exist():
    code = _code(README.read_text())
    assert "isales-watcher ledger park" in code  # the check sees the commands
    assert _unknown(code) == []


def _record(**fields: object) -> FileRecord:
    values: dict[str, object] = {
        "id": "20261123-132501-3fa9c2",
        "route": "r",
        "campaign_id": "c1",
        "inbox": "/in",
        "name": "a.xlsx",
        "size_bytes": 1,
        "mtime": 1,
        "state": FileState.uncertain,
        "sha256": None,
        "import_task_id": None,
        "outcome": None,
        "reason": "uploadFileServer may or may not have been accepted; settle it with "
        "'isales-watcher ledger resolve 20261123-132501-3fa9c2 --imported TASK_ID' or "
        "'--not-imported'.",
        "details": None,
        "created_at": "2026-11-23T13:25:01.000+00:00",
        "updated_at": "2026-11-23T13:25:01.000+00:00",
        "submitted_at": "2026-11-23T13:25:01.000+00:00",
        "settled_path": None,
    }
    values.update(fields)
    return FileRecord(**values)  # type: ignore[arg-type]


def test_the_on_hold_receipt_names_only_commands_that_exist():
    text = receipt_text(_record())
    assert "ON HOLD" in text
    assert "isales-watcher ledger resolve" in text
    assert _unknown(text) == []
    assert _unknown("isales-watcher ledger hold x") == ["isales-watcher ledger hold"]


@pytest.fixture
def health(tmp_path: Path):
    paths = {"dir": tmp_path, "sk": tmp_path / "sk", "id": tmp_path / "id", "kh": tmp_path / "kh"}
    for name in ("sk", "id", "kh"):
        paths[name].write_text("x")
    settings = load_settings(write(paths, extra="[daemon]\npoll_interval_s = 1"))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    health = Health(settings, ledger, lambda: (0, 0.0))
    yield settings, ledger, health
    ledger.close()


def test_a_route_starved_for_a_minute_is_named_until_it_gets_room(health):
    settings, ledger, health = health
    now = [1000.0]
    health._clock = lambda: now[0]
    health.route_listed("spring", "/home/sftp/inbox/spring", waiting_for_room=3)
    now[0] += 30
    health.route_listed("spring", "/home/sftp/inbox/spring", waiting_for_room=3)
    assert health.route_problems() == {}  # a burst, not starvation
    now[0] += 31
    assert health.route_problems() == {
        "spring": "starved: 3 files wait in /home/sftp/inbox/spring for 61 s; "
        "max_in_flight is reached"
    }
    assert "starved: 3 files wait" in StatusPage(settings, ledger, health).render()
    health.route_listed("spring", "/home/sftp/inbox/spring", waiting_for_room=0)  # one was claimed
    assert health.route_problems() == {}


def test_a_refused_route_is_named_with_its_reason(health):
    settings, ledger, health = health
    inbox = "/home/sftp/inbox/spring"
    health.route_failed("spring", inbox, f"cannot write in {inbox}", refused=True)
    ready, details = health.readiness()
    assert not ready
    assert details["routes"] == {"spring": "refused: cannot write in /home/sftp/inbox/spring"}
    health.route_failed("spring", "/home/sftp/inbox/spring", "a hiccup", refused=False)
    assert "routes" not in health.readiness()[1]  # a failed listing is not a refusal
    page = StatusPage(settings, ledger, health).render()
    assert "failing: a hiccup" in page
