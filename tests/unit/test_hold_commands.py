"""ledger park|unpark|forget on a real ledger, from the command line's entry point: what an
operator's own words (--reason, --by) may do to the next operator's terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_settings import files, write  # noqa: F401 (a fixture)
from watcher.cli import main
from watcher.ledger import Ledger
from watcher.models import FileState, Outcome, RemoteEntry

_HOSTILE = "\x1b]0;owned\x07\x1b[2J\nIMPORTED"


@pytest.fixture
def config(files: dict[str, Path]) -> Path:  # noqa: F811 (the fixture above)
    return write(files, extra=f'[daemon]\nstate_dir = "{files["dir"] / "state"}"\n')


def _claimed(config: Path) -> str:
    ledger = Ledger(config.parent / "state" / "ledger.sqlite3")
    try:
        row = ledger.insert_claim(
            route="spring", campaign_id="1647", inbox="/in", entry=RemoteEntry("a.xlsx", 10, 1)
        )
        ledger.transition(row.id, FileState.claimed, expect=FileState.claiming)
        return row.id
    finally:
        ledger.close()


def test_hostile_reasons_and_names_reach_no_terminal_raw(config, capsys):
    file_id = _claimed(config)
    for command in ("park", "unpark"):
        code = main(
            [
                "ledger",
                command,
                file_id,
                "--reason",
                _HOSTILE,
                "--by",
                _HOSTILE,
                "--config",
                str(config),
            ]
        )
        assert code == 0
    assert main(["ledger", "show", file_id, "--config", str(config)]) == 0
    shown = capsys.readouterr()
    assert "\x1b" not in shown.out + shown.err
    assert "\nIMPORTED" not in shown.out + shown.err
    assert "\\x1b]0;owned" in shown.out  # said, escaped


def _settled(ledger: Ledger, name: str, outcome: Outcome, task: str | None = None) -> str:
    row = ledger.insert_claim(
        route="spring", campaign_id="1647", inbox="/in", entry=RemoteEntry(name, 10, 1)
    )
    ledger.transition(row.id, FileState.claimed, expect=FileState.claiming, sha256="same")
    if task is not None:
        ledger.begin_submit(row.id)
        ledger.transition(
            row.id, FileState.tracking, expect=FileState.submitting, import_task_id=task
        )
    now = ledger.get(row.id).state
    ledger.transition(row.id, FileState.settling, expect=now, outcome=outcome)
    ledger.transition(row.id, FileState(outcome.value), expect=FileState.settling)
    return row.id


def test_forgetting_a_duplicate_says_which_import_still_counts(config, capsys):
    ledger = Ledger(config.parent / "state" / "ledger.sqlite3")
    try:
        imported = _settled(ledger, "list.xlsx", Outcome.done, task="t1")
        duplicate = _settled(ledger, "again.xlsx", Outcome.rejected)
    finally:
        ledger.close()
    assert main(["ledger", "forget", duplicate, "--reason", "x", "--config", str(config)]) == 0
    said = capsys.readouterr().out
    assert "may be imported again" not in said
    assert f"still counts as imported as list.xlsx ({imported})" in said
    assert main(["ledger", "forget", imported, "--reason", "x", "--config", str(config)]) == 0
    assert "the same list may be imported again" in capsys.readouterr().out


def test_an_exported_cell_is_never_a_formula_in_a_spreadsheet():
    from watcher.ledger_commands import _inert

    assert _inert('=HYPERLINK("http://x","y").xlsx') == '\'=HYPERLINK("http://x","y").xlsx'
    assert _inert("+1.xlsx") == "'+1.xlsx"
    assert _inert("@SUM(A1)") == "'@SUM(A1)"
    assert _inert("-2") == "'-2"
    assert _inert("march.xlsx") == "march.xlsx"
    assert _inert(None) is None
