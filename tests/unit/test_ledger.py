"""The ledger on a real SQLite file: state transitions, the audit trail, duplicate detection."""

from __future__ import annotations

import pytest

from watcher.errors import LedgerError, StateChangedError, TaskTakenError
from watcher.ledger import Ledger
from watcher.models import FileState, Outcome, RemoteEntry


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    yield ledger
    ledger.close()


def claimed(ledger: Ledger, name: str, sha: str, campaign: str = "c1"):
    row = ledger.insert_claim(
        route="r", campaign_id=campaign, inbox="/in", entry=RemoteEntry(name, 10, 1)
    )
    ledger.transition(row.id, FileState.claimed, expect=FileState.claiming)
    return ledger.update(row.id, sha256=sha)


def test_wal_and_a_full_audit_trail(ledger, tmp_path):
    row = claimed(ledger, "a.xlsx", "s1")
    assert row.processing_path == f"/in/processing/{row.id}/a.xlsx"
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    steps = [(t["from_state"], t["to_state"]) for t in ledger.transitions(row.id)]
    assert steps == [(None, "claiming"), ("claiming", "claimed")]
    with pytest.raises(LedgerError, match="expected state"):
        ledger.transition(row.id, FileState.tracking, expect=FileState.submitting)


def test_the_same_content_for_the_same_campaign_is_submitted_once(ledger):
    first = claimed(ledger, "a.xlsx", "same")
    second = claimed(ledger, "b.xlsx", "same")
    other_campaign = claimed(ledger, "c.xlsx", "same", campaign="c2")
    assert ledger.begin_submit(first.id).state is FileState.submitting
    twin = ledger.begin_submit(second.id)
    assert twin.id == first.id  # the earlier import is named
    assert ledger.get(second.id).state is FileState.claimed
    assert ledger.begin_submit(other_campaign.id).state is FileState.submitting


def test_a_failed_import_does_not_block_a_new_attempt(ledger):
    first = claimed(ledger, "a.xlsx", "same")
    ledger.begin_submit(first.id)
    ledger.transition(
        first.id, FileState.tracking, expect=FileState.submitting, import_task_id="t1"
    )
    ledger.transition(
        first.id,
        FileState.settling,
        expect=FileState.tracking,
        outcome=Outcome.rejected,
        reason="import failed",
    )
    second = claimed(ledger, "b.xlsx", "same")
    assert ledger.imported_twin(second) is None
    assert ledger.begin_submit(second.id).state is FileState.submitting


def test_unfinished_rows_survive_a_reopen(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite3")
    row = claimed(ledger, "a.xlsx", "x")
    ledger.close()
    again = Ledger(tmp_path / "l.sqlite3")
    assert [r.id for r in again.unfinished()] == [row.id]
    assert again.find(row.id[:10])[0].name == "a.xlsx"
    again.close()


def test_a_ledger_of_the_first_schema_is_migrated(tmp_path):
    import sqlite3

    from watcher import ledger as module

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(module._SCHEMA[0] + "; PRAGMA user_version=1;")
    db.execute(
        "INSERT INTO files (id, route, campaign_id, inbox, name, size_bytes, mtime, state,"
        " created_at, updated_at) VALUES ('a', 'r', 'c', '/in', 'x.xlsx', 1, 1, 'done', 't', 't')"
    )
    db.commit()
    db.close()
    migrated = Ledger(path)
    assert migrated._db.execute("PRAGMA user_version").fetchone()[0] == len(module._SCHEMA)
    record = migrated.get("a")
    assert record.state is FileState.done
    assert record.force_submit == 0
    migrated.close()


def test_a_task_once_owned_stays_owned_after_a_reprocess(ledger):
    row = claimed(ledger, "a.xlsx", "s")
    ledger.begin_submit(row.id)
    ledger.transition(row.id, FileState.tracking, expect=FileState.submitting, import_task_id="t1")
    ledger.transition(row.id, FileState.uncertain, expect=FileState.tracking, reason="deadline")
    again = ledger.reprocess(row.id, actor="ops", reason="send it again")
    assert again.import_task_id is None
    owner = ledger.task_owner("c1", "t1")
    assert owner is not None
    assert owner.id == row.id
    assert "t1" in ledger.owned_tasks("c1")
    other = claimed(ledger, "b.xlsx", "other")
    ledger.begin_submit(other.id)
    with pytest.raises(TaskTakenError, match="belongs to file"):
        ledger.transition(
            other.id, FileState.tracking, expect=FileState.submitting, import_task_id="t1"
        )
    assert ledger.get(other.id).state is FileState.submitting  # nothing changed


def test_the_same_rows_are_a_duplicate_unless_told_otherwise(ledger):
    first = claimed(ledger, "a.xlsx", "bytes-1")
    ledger.update(first.id, rows_fingerprint="rows-v1:3:abc")
    ledger.begin_submit(first.id)
    second = claimed(ledger, "b.xlsx", "bytes-2")
    second = ledger.update(second.id, rows_fingerprint="rows-v1:3:abc")
    assert ledger.imported_twin(second, "rows") is not None
    assert ledger.imported_twin(second, "bytes") is None
    assert ledger.imported_twin(second, "off") is None
    assert ledger.begin_submit(second.id, "rows").id == first.id
    assert ledger.begin_submit(second.id, "bytes").id == second.id


def test_a_ledger_of_schema_2_is_migrated_and_its_tasks_are_owned(tmp_path):
    import sqlite3

    from watcher.ledger import _SCHEMA

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for number, script in enumerate(_SCHEMA[:2], start=1):
        db.executescript(f"{script}; PRAGMA user_version={number};")
    db.execute(
        "INSERT INTO files (id, route, campaign_id, inbox, name, size_bytes, mtime, state,"
        " import_task_id, created_at, updated_at) VALUES ('f1', 'r', 'c1', '/in', 'a.xlsx', 1, 1,"
        " 'done', 't-old', 'x', 'x')"
    )
    db.execute(
        "INSERT INTO files (id, route, campaign_id, inbox, name, size_bytes, mtime, state,"
        " details, submitted_at, created_at, updated_at) VALUES ('f2', 'r', 'c1', '/in', 'b.xlsx',"
        " 1, 1, 'uncertain', '{\"validation\": {\"data_rows\": 42}}', 'x', 'x', 'x')"
    )
    db.execute(
        "INSERT INTO files (id, route, campaign_id, inbox, name, size_bytes, mtime, state,"
        " import_task_id, submitted_at, created_at, updated_at) VALUES ('f3', 'r', 'c1', '/in',"
        " 'c.xlsx', 1, 1, 'uncertain', 't-slow', 'x', 'x', 'x')"
    )
    db.commit()
    db.close()
    ledger = Ledger(path)
    try:
        assert ledger.task_owner("c1", "t-old").id == "f1"
        assert ledger.get("f1").rows_fingerprint is None
        parked = ledger.get("f2")
        assert parked.data_rows == 42  # the count rule applies to files parked before
        # Parked files are looked at again: by reconciling, or by tracking their task.
        assert [r.id for r in ledger.due_rechecks("2026-01-01")] == ["f2", "f3"]
    finally:
        ledger.close()


def test_a_file_isales_acknowledged_is_never_resolved_as_not_imported(ledger):
    row = claimed(ledger, "a.xlsx", "s")
    ledger.begin_submit(row.id)
    ledger.transition(row.id, FileState.tracking, expect=FileState.submitting, import_task_id="t9")
    ledger.transition(row.id, FileState.uncertain, expect=FileState.tracking, reason="deadline")
    with pytest.raises(LedgerError, match=r"acknowledged .* as import task t9"):
        ledger.resolve(row.id, task_id=None, actor="ops", reason="looked")
    with pytest.raises(LedgerError, match="not t-other"):
        ledger.resolve(row.id, task_id="t-other", actor="ops", reason="a typo")
    resolved = ledger.resolve(row.id, task_id="t9", actor="ops", reason="it ended")
    assert resolved.state is FileState.tracking


def test_a_second_submission_never_uses_the_first_one_s_window(ledger):
    import json
    from datetime import datetime, timedelta

    from watcher.settings import IsalesSettings
    from watcher.submit import Reconciler

    settings = IsalesSettings(
        base_url="https://10.0.0.5:28443", vdn_id=1, access_key="a", secret_key="s"
    )
    reconciler = Reconciler(None, ledger, settings)  # type: ignore[arg-type]
    row = claimed(ledger, "a.xlsx", "s")
    first = ledger.begin_submit(row.id)
    an_hour_ago = (datetime.fromisoformat(first.submitted_at) - timedelta(hours=1)).isoformat()
    first = ledger.update(row.id, submitted_at=an_hour_ago)
    first = reconciler.note_lost_answer(first, cause="lost once")
    old = reconciler.window(first)
    ledger.transition(row.id, FileState.uncertain, expect=FileState.submitting, reason="parked")
    ledger.resolve(row.id, task_id=None, actor="ops", reason="not imported")
    second = ledger.begin_submit(row.id)  # a crash right after this POST: no new evidence
    assert "submission" in json.loads(second.details or "{}")  # the old one is still there
    new = reconciler.window(second)
    assert new.opens_at - old.opens_at >= timedelta(minutes=59)


def test_a_damaged_ledger_is_found_at_start(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    for i in range(300):
        claimed(ledger, f"f{i}-{'x' * 200}.xlsx", f"sha{i}")
    ledger.verify()  # sound
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[3 * page : 5 * page] = b"\xff" * (2 * page)  # a disk that lost two pages
    path.write_bytes(bytes(data))

    def open_and_verify() -> None:
        Ledger(path).verify()  # either step may be the one that finds it

    with pytest.raises(LedgerError, match=r"is damaged|cannot open") as error:
        open_and_verify()
    assert "ledger.sqlite3" in str(error.value)


def submitted(ledger: Ledger, name: str, sha: str, task: str) -> str:
    row = claimed(ledger, name, sha)
    ledger.begin_submit(row.id)
    ledger.transition(row.id, FileState.tracking, expect=FileState.submitting, import_task_id=task)
    return row.id


def test_a_parked_file_is_never_sent_and_goes_back_where_it_was(ledger):
    row = claimed(ledger, "a.xlsx", "s")
    parked = ledger.park(row.id, actor="ann", reason="campaign paused")
    assert parked.state is FileState.parked
    assert parked.reason == "parked: campaign paused"
    assert ledger.unfinished() == []  # the daemon does not carry it on
    # The daemon, holding the row from before, tries to send it: refused, and it can tell why.
    with pytest.raises(StateChangedError, match="expected state claimed, found parked"):
        ledger.begin_submit(row.id)
    assert ledger.operator_acted(row.id)
    back = ledger.unpark(row.id, actor="bob", reason="campaign on again")
    assert back.state is FileState.claimed
    steps = [(t["from_state"], t["to_state"], t["actor"]) for t in ledger.transitions(row.id)]
    assert steps[-2:] == [("claimed", "parked", "ann"), ("parked", "claimed", "bob")]
    assert not ledger.operator_acted(submitted(ledger, "b.xlsx", "t", "t1"))


def test_a_file_whose_upload_may_be_under_way_is_not_parked(ledger):
    row = claimed(ledger, "a.xlsx", "s")
    ledger.begin_submit(row.id)
    with pytest.raises(LedgerError, match="upload to iSales may be under way"):
        ledger.park(row.id, actor="ann", reason="x")
    tracking = ledger.transition(
        row.id, FileState.tracking, expect=FileState.submitting, import_task_id="t1"
    )
    assert ledger.park(tracking.id, actor="ann", reason="x").state is FileState.parked
    with pytest.raises(LedgerError, match="parked already"):
        ledger.park(row.id, actor="ann", reason="x")
    assert ledger.unpark(row.id, actor="ann", reason="x").state is FileState.tracking
    with pytest.raises(LedgerError, match="is tracking, not parked"):
        ledger.unpark(row.id, actor="ann", reason="x")


def test_a_forgotten_file_is_no_duplicate_and_keeps_its_history(ledger):
    first = submitted(ledger, "a.xlsx", "same", "t1")
    with pytest.raises(LedgerError, match="only a settled"):
        ledger.forget(first, actor="ann", reason="x")
    ledger.transition(first, FileState.settling, expect=FileState.tracking, outcome=Outcome.done)
    ledger.transition(first, FileState.done, expect=FileState.settling)
    second = claimed(ledger, "b.xlsx", "same")
    assert ledger.begin_submit(second.id).id == first  # a duplicate
    forgotten = ledger.forget(first, actor="ann", reason="campaign reset")
    assert forgotten.forgotten_at is not None
    assert forgotten.state is FileState.done
    assert ledger.transitions(first)[-1]["reason"] == "forgotten: campaign reset"
    with pytest.raises(LedgerError, match="forgotten already"):
        ledger.forget(first, actor="ann", reason="x")
    assert ledger.begin_submit(second.id).state is FileState.submitting
    assert ledger.task_owner("c1", "t1").id == first  # its task stays its own
    third = claimed(ledger, "c.xlsx", "same")
    assert ledger.begin_submit(third.id).id == second.id  # the new import counts


def test_a_file_parked_after_it_was_sent_still_makes_its_list_a_duplicate(ledger):
    # Parked while tracking (iSales has its import) or while uncertain (it may have): the same
    # list dropped again meanwhile must not reach iSales a second time.
    tracking = submitted(ledger, "a.xlsx", "same", "t1")
    ledger.park(tracking, actor="ann", reason="campaign paused")
    again = claimed(ledger, "b.xlsx", "same")
    assert ledger.begin_submit(again.id).id == tracking
    doubtful = claimed(ledger, "c.xlsx", "other")
    ledger.begin_submit(doubtful.id)
    ledger.transition(doubtful.id, FileState.uncertain, expect=FileState.submitting)
    ledger.park(doubtful.id, actor="ann", reason="x")
    assert ledger.begin_submit(claimed(ledger, "d.xlsx", "other").id).id == doubtful.id
    assert [r.id for r in ledger.unresolved("c1")] == [doubtful.id]  # its window is its own
    # Parked before anything was sent: no duplicate.
    never_sent = claimed(ledger, "e.xlsx", "third")
    ledger.park(never_sent.id, actor="ann", reason="x")
    assert ledger.begin_submit(claimed(ledger, "f.xlsx", "third").id).state is FileState.submitting


def test_an_id_is_found_by_its_start_only_and_never_by_a_pattern(ledger):
    row = claimed(ledger, "a.xlsx", "s")
    assert [r.id for r in ledger.lookup(row.id[:9])] == [row.id]
    assert [r.id for r in ledger.lookup(row.id.upper())] == [row.id]
    for key in ("%", "_", "", f"{row.id[:8]}%", row.id[:8] + "_"):
        assert ledger.lookup(key) == [], key  # `ledger park %` must not hold every file
