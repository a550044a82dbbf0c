"""Every file operation fails in every way, and the daemon goes on: each file ends where it must.

The local source is wrapped so that its calls fail as a real disk or mount fails them: EACCES,
ENAMETOOLONG, EIO, a call that never answers (the deadline), and a file that really vanishes.
The errors go through the source's own mapping, so what is tested is what production does.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from tests.conftest import settled_as, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.daemon import Daemon
from watcher.ledger import Ledger
from watcher.models import FileState
from watcher.settings import load_settings
from watcher.sources.local import LocalSource

OP_TIMEOUT_S = 1.0
FAILURES = ("EACCES", "ENAMETOOLONG", "EIO", "timeout")


@dataclass
class Rule:
    """Fail the next ``times`` calls of ``op`` (on the file ``name`` only, when given)."""

    op: str
    failure: str
    times: int
    name: str | None = None
    fired: int = 0


def _op(what: str, inbox: str) -> str:
    """Which step a call belongs to, from the words the source describes it with."""
    verb, _, rest = what.partition(" ")
    if ".isales-watcher-probe" in rest:
        return "access-check"
    if verb == "renaming":
        source = rest.split(" to ")[0]
        return "claim" if os.path.dirname(source) == inbox else "settle"
    if verb == "writing":
        return "receipt"
    if verb == "creating" and "/processing/" in rest:
        return "makedirs"
    if verb == "removing" and "/processing/" in rest and ".result." not in rest:
        return "remove_dir"
    return {
        "listing": "list",
        "reading": "probe",
        "checking": "exists",
        "copying": "download",
    }.get(verb, verb)


class FaultyLocal(LocalSource):
    """The real local source, whose calls fail as the rules say."""

    def __init__(self, *args: Any, inbox: str, root: Path, aside: Path, rules: list[Rule]) -> None:
        super().__init__(*args)
        self.inbox, self.root, self.aside, self.rules = inbox, root, aside, rules
        self.ledger_path = Path()

    def _name(self, what: str) -> str:
        """``what``, with the file's name added where the path holds only its id."""
        if "/processing/" not in what:
            return what
        file_id = what.split("/processing/")[1].split("/")[0].split(" ")[0]
        with sqlite3.connect(self.ledger_path) as db:
            found = db.execute("SELECT name FROM files WHERE id = ?", (file_id,)).fetchone()
        return f"{what} ({found[0]})" if found else what

    def _rule(self, what: str) -> Rule | None:
        op = _op(what, self.inbox)
        for rule in self.rules:
            if rule.op != op or rule.fired >= rule.times:
                continue
            if rule.name is None or rule.name in self._name(what):
                rule.fired += 1
                return rule
        return None

    async def _call(self, what: str, work: Callable[[], Any], progress: Any = None) -> Any:
        rule = self._rule(what)
        if rule is not None:
            work = self._sabotage(rule, work)
        return await super()._call(what, work, progress)

    def _sabotage(self, rule: Rule, work: Callable[[], Any]) -> Callable[[], Any]:
        def fail() -> Any:
            if rule.failure == "vanish":  # really gone: another tool took it
                assert rule.name is not None
                for found in self.root.rglob(rule.name):
                    shutil.move(found, self.aside / found.name)
                return work()
            if rule.failure == "timeout":  # a hung mount: no answer before the deadline
                time.sleep(OP_TIMEOUT_S + 0.5)
                raise OSError(errno.EIO, "Input/output error")
            code = getattr(errno, rule.failure)
            raise OSError(code, os.strerror(code))

        return fail


def _states(world: Any) -> list[tuple[str, FileState, str | None]]:
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    try:
        return [(r.name, r.state, r.reason) for r in reversed(ledger.rows())]
    finally:
        ledger.close()


async def test_every_operation_failing_every_way_stops_nothing(
    make_world, emulator, sshd, tmp_path
):
    local = f'\n[local]\nbase_dir = "{sshd.root}"\n'
    world = make_world(
        daemon_extra='source = "local"\nretry_backoff_s = 0.2\nmax_backoff_s = 1\n' + local
    )
    settings = load_settings(world.config)
    settings = settings.model_copy(
        update={"sftp": settings.sftp.model_copy(update={"op_timeout_s": OP_TIMEOUT_S})}
    )
    inbox = str(world.inbox)
    # Each kind of failure hits two files twice at every step: one file at the steps named by
    # its path, the other at the steps on its processing/<id> folder (a claim refused twice
    # more would be given up on, rightly: three refusals make a poison file).
    transient = [Rule("list", failure, times=2) for failure in FAILURES]
    for failure in FAILURES:
        for op in ("probe", "claim", "exists", "download", "receipt", "settle"):
            transient.append(Rule(op, failure, 2, f"{failure}-a.xlsx"))
        for op in ("makedirs", "remove_dir"):
            transient.append(Rule(op, failure, 2, f"{failure}-b.xlsx"))
    named = [
        Rule("probe", "vanish", 1, "vanish-probe.xlsx"),
        Rule("claim", "vanish", 1, "vanish-claim.xlsx"),
        Rule("download", "vanish", 1, "vanish-download.xlsx"),
        Rule("download", "EACCES", 1000, "unreadable.xlsx"),  # never readable: rejected
        Rule("settle", "EACCES", 6, "stuck.xlsx"),  # past the limit, then it works
    ]
    aside = tmp_path / "aside"
    aside.mkdir()
    source = FaultyLocal(
        settings.local,
        settings.sftp.base_path,
        OP_TIMEOUT_S,
        inbox=inbox,
        root=world.inbox,
        aside=aside,
        rules=transient + named,
    )
    source.ledger_path = world.state_dir / "ledger.sqlite3"
    daemon = Daemon(settings, source=source)
    runner = asyncio.create_task(daemon.run())
    plain = [f"{failure}-{half}.xlsx" for failure in FAILURES for half in "ab"]
    ends = dict.fromkeys(plain, "done") | {"unreadable.xlsx": "rejected", "stuck.xlsx": "done"}
    try:
        with structlog.testing.capture_logs() as logs:
            await wait_for(daemon.ready.is_set, 30, "the daemon ready")
            for seed, name in enumerate([*plain, *(r.name for r in named)]):
                assert name is not None
                (world.inbox / name).write_bytes(xlsxwriter_bytes(rows_valid(3, seed=200 + seed)))
            for name, outcome in ends.items():
                await wait_for(settled_as(world, name, outcome), 180, f"{name} {outcome}")
            await wait_for(lambda: all(r.fired == r.times for r in transient), 60, "all faults")
            assert not runner.done(), "the daemon keeps running"
    finally:
        daemon.request_stop()
        await asyncio.wait_for(runner, 60)

    rows = _states(world)
    # Nothing is left half-way: every row ended.
    assert not [r for r in rows if not r[1].is_terminal], rows
    # Each imported file was sent once; nothing vanished or unreadable was sent.
    assert Counter(u.file_name for u in emulator.uploads) == Counter([*plain, "stuck.xlsx"])
    for name in plain:
        assert world.settled("done", f"{name}.result.txt").exists()
    # A file that cannot be read is rejected with a receipt that says so.
    receipt = world.settled("rejected", "unreadable.xlsx.result.txt").read_text()
    assert "could not be read" in receipt
    assert "Permission denied" in receipt
    # A settle that kept failing was said and recorded; then it ended in done/.
    assert any(e["event"] == "file.settle_stuck" for e in logs)
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    try:
        [stuck] = [r for r in ledger.rows() if r.name == "stuck.xlsx"]
    finally:
        ledger.close()
    assert json.loads(stuck.details or "{}")["settle_stuck"]["attempts"] == 5
    assert world.settled("done", "stuck.xlsx.result.txt").exists()
    # Vanished files: before the claim, no row and one line; after it, a lost row with a reason.
    assert not any(r[0] == "vanish-probe.xlsx" for r in rows)
    said = [e for e in logs if e["event"] == "file.vanished_before_claim"]
    assert [e["file"] for e in said] == [f"{inbox}/vanish-probe.xlsx"]
    assert any(r[0] == "vanish-claim.xlsx" and r[1] is FileState.lost for r in rows)
    [gone] = [r for r in rows if r[0] == "vanish-download.xlsx"]
    assert gone[1] is FileState.lost
    assert "removed from processing/" in (gone[2] or "")
    # And nothing is left in processing/ but empty folders at most.
    assert not [p for p in (world.inbox / "processing").rglob("*") if p.is_file()]
