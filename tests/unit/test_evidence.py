"""What proves that an import task is the one a lost uploadFileServer answer created."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from watcher.models import ImportTask
from watcher.submit.evidence import Claimant, Placed, Window, judge, place_time, records_of

SENT = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
WINDOW = Window.around(SENT, SENT + timedelta(seconds=30), after=timedelta(minutes=5))
LATER = SENT + timedelta(hours=1)


def task(task_id: str, begun: datetime | str | None, rows: int | None = 3, status: str = "2"):
    text = begun.isoformat(timespec="milliseconds") if isinstance(begun, datetime) else begun
    return ImportTask(
        task_id, status, succ_num=rows, repeat_num=0 if rows is not None else None, begin_time=text
    )


def verdict(tasks, *, rows=3, by_counts=True, owned=(), claimants=(), zone=None, now=LATER):
    return judge(
        tasks,
        window=WINDOW,
        rows=rows,
        by_counts=by_counts,
        owned=set(owned),
        claimants=claimants,
        zone=zone,
        skew_s=0.0,
        now=now,
    )


def test_the_single_task_in_the_window_with_our_row_count_is_adopted():
    found = verdict([task("t1", SENT + timedelta(seconds=3))])
    assert found.task is not None
    assert found.task.task_id == "t1"
    assert "3 records = 3 rows" in found.reason


def test_a_foreign_task_with_another_count_is_not_adopted():
    found = verdict([task("hand", SENT + timedelta(seconds=3), rows=999)])
    assert found.task is None
    assert not found.waiting
    assert "999 records" in found.reason


def test_two_fitting_tasks_are_not_adopted():
    found = verdict(
        [task("a", SENT + timedelta(seconds=2)), task("b", SENT + timedelta(seconds=9))]
    )
    assert found.task is None
    assert "2 unowned tasks fit" in found.reason


def test_the_window_is_bounded_on_both_sides():
    before = task("before", SENT - timedelta(minutes=1))
    after = task("after", SENT + timedelta(minutes=10))
    assert verdict([before]).task is None
    assert verdict([after]).task is None


def test_owned_tasks_are_never_candidates():
    assert verdict([task("mine", SENT + timedelta(seconds=1))], owned={"mine"}).task is None


def test_a_task_whose_counts_are_not_final_is_waited_for():
    running = task("t1", SENT + timedelta(seconds=3), rows=None, status="1")
    found = verdict([running])
    assert found.task is None
    assert found.waiting


def test_a_task_not_begun_is_waited_for_only_while_the_window_is_open():
    queued = task("q", None, rows=None, status="0")
    assert verdict([queued], now=SENT + timedelta(seconds=40)).waiting
    assert not verdict([queued], now=LATER).waiting


def test_a_task_in_another_uncertain_file_s_window_is_never_taken():
    other = Claimant(
        "earlier-file", Window(SENT - timedelta(minutes=2), SENT + timedelta(minutes=4)), 3
    )
    found = verdict([task("t1", SENT + timedelta(seconds=3))], claimants=[other])
    assert found.task is None
    assert "earlier-file" in found.reason
    # ...unless its record count rules that file out.
    other_rows = Claimant("earlier-file", other.window, 50)
    assert verdict([task("t1", SENT + timedelta(seconds=3))], claimants=[other_rows]).task


def test_window_only_matching_parks_when_another_unowned_task_exists():
    ours = task("t1", SENT + timedelta(seconds=3), rows=999)
    old_foreign = task("old", SENT - timedelta(hours=3))
    assert verdict([ours], by_counts=False).task is not None
    found = verdict([ours, old_foreign], by_counts=False)
    assert found.task is None
    assert "reconcile_by_counts = false" in found.reason


def test_a_time_without_a_zone_is_placed_in_the_server_s_zone_never_utc():
    beijing = timezone(timedelta(hours=8))
    local = (SENT + timedelta(seconds=3)).astimezone(beijing).replace(tzinfo=None)
    naive = task("t1", local.isoformat(timespec="milliseconds"))
    assert verdict([naive], zone=beijing).task is not None
    unknown = verdict([naive], zone=None)
    assert unknown.task is None
    assert "server_utc_offset" in unknown.reason
    # Read as UTC, the same text would be 8 hours off: outside the window.
    assert verdict([naive], zone=UTC).task is None


def test_an_unparseable_time_is_never_new():
    assert place_time("yesterday", None, 0.0) is Placed.garbage
    assert verdict([task("t1", "yesterday")]).task is None


def test_the_clock_skew_moves_server_times_onto_our_clock():
    server_ahead = (SENT + timedelta(seconds=3) + timedelta(minutes=10)).isoformat()
    assert place_time(server_ahead, None, 600.0) == SENT + timedelta(seconds=3)


def test_records_are_final_only_when_the_task_ended():
    assert records_of(ImportTask("t", "1", succ_num=3)) is None
    assert records_of(ImportTask("t", "2")) is None
    assert records_of(ImportTask("t", "2", succ_num=2, repeat_num=1, black_num=1, fail_num=1)) == 5


def test_negative_counts_or_an_end_without_counts_decide_nothing():
    odd = ImportTask("t1", "2", succ_num=-7, fail_num=10, begin_time=SENT.isoformat())
    found = verdict([odd])
    assert found.task is None
    assert not found.waiting
    failed = ImportTask("t2", "3", begin_time=(SENT + timedelta(seconds=2)).isoformat())
    ours = task("t3", SENT + timedelta(seconds=4))
    found = verdict([failed, ours])
    assert found.task is None  # the failed one may be ours: whose is which cannot be told
    assert not found.waiting
    assert "without usable record counts" in found.reason


def test_an_incomplete_listing_never_proves_a_task_is_the_only_one():
    found = judge(
        [task("t1", SENT + timedelta(seconds=3))],
        window=WINDOW,
        rows=3,
        by_counts=True,
        owned=set(),
        claimants=(),
        zone=None,
        skew_s=0.0,
        now=LATER,
        complete=False,
    )
    assert found.task is None
    assert "could not be read to its end" in found.reason
