"""Every failure iSales and the network can produce: at most one import per (campaign, content)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta

import pytest
import stamina
import structlog

from tests.conftest import cli, settled_as, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.isales.faults import Fault, FaultKind
from watcher.ledger import Ledger
from watcher.models import FileState

FAST = "request_timeout_s = 1\nreconcile_grace_s = 4\nallow_insecure_http = true"
DAEMON = "retry_backoff_s = 0.2\nmax_backoff_s = 1"


def at_most_once(emulator) -> None:
    """The guarantee: no (campaign, content) was ever imported twice."""
    seen = Counter((u.campaign_id, u.fetched_sha256 or u.task_id) for u in emulator.uploads)
    assert all(n == 1 for n in seen.values()), seen


def states(world) -> list[FileState]:
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    try:
        return [r.state for r in reversed(ledger.rows())]
    finally:
        ledger.close()


async def drop_and_settle(world, upload, name="list.xlsx", seed=0, outcome="done"):
    await upload(world.inbox / name, xlsxwriter_bytes(rows_valid(4, seed=seed)))
    await wait_for(settled_as(world, name, outcome), 45, f"{name} {outcome} in the ledger")
    receipt = world.settled(outcome, f"{name}.result.txt")
    assert receipt.exists()  # written before the row ends
    return receipt.read_text()


@pytest.mark.parametrize(
    ("fault", "retried_in_place"),
    [
        (Fault(FaultKind.accept_then_503), False),  # a gateway forwarded it, then failed
        (Fault(FaultKind.accept_then_504), False),
        (Fault(FaultKind.status, status=429, retry_after_s=0.6), True),
        (Fault(FaultKind.delay, delay_s=2.0), False),  # the answer comes after our timeout
        (Fault(FaultKind.drop_after_accept), False),
        (Fault(FaultKind.accept_then_502), False),
        (Fault(FaultKind.broken_body), False),
    ],
    ids=[
        "503-after-accept",
        "504-after-accept",
        "429-retry-after",
        "timeout-after-accept",
        "drop-after-accept",
        "502-after-accept",
        "broken-body",
    ],
)
async def test_transient_and_ambiguous_answers_end_in_one_import(
    make_world, run_daemon, emulator, upload, fault, retried_in_place
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", fault)
    await run_daemon(world)
    text = await drop_and_settle(world, upload)
    assert "IMPORTED" in text
    assert len(emulator.uploads) == 1
    at_most_once(emulator)
    upload_calls = [c for c in emulator.calls if "uploadFileServer" in c.path]
    # Retried only when provably not acted on; reconciled (never re-sent) otherwise.
    assert len(upload_calls) == (2 if retried_in_place else 1)
    if fault.retry_after_s:
        assert upload_calls[1].at - upload_calls[0].at >= fault.retry_after_s * 0.9
    assert states(world) == [FileState.done]


async def test_a_refused_signature_is_explained_and_retried_later(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", Fault(FaultKind.status, status=401))
    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        await drop_and_settle(world, upload)
    assert any(e["event"] == "isales.insecure_http" for e in logs)  # said at every start
    [failed] = [e for e in logs if e["event"] == "file.step_failed"]
    assert "signature refused" in failed["error"]
    assert "check access_key/secret_key and the clock" in failed["error"]
    assert "signed at 20" in failed["error"]
    assert len(emulator.uploads) == 1


async def test_a_failed_import_is_rejected_with_the_server_message(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", Fault(FaultKind.fail_import, err_msg="too many columns"))
    await run_daemon(world)
    text = await drop_and_settle(world, upload, outcome="rejected")
    assert "iSales says: too many columns" in text
    assert len(emulator.uploads) == 1


async def test_a_long_running_import_is_tracked_to_its_end(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", Fault(FaultKind.slow_import, delay_s=4))
    await run_daemon(world)
    text = await drop_and_settle(world, upload)
    assert "Rows: 4 imported" in text
    polls = [c for c in emulator.calls if "queryDataImportTask" in c.path]
    assert len(polls) >= 4


async def test_an_import_past_the_tracking_deadline_is_parked_then_settled_when_it_ends(
    make_world, run_daemon, emulator, upload
):
    world = make_world(
        isales_extra=FAST + "\ntrack_timeout_s = 1\nreconcile_recheck_s = 1", daemon_extra=DAEMON
    )
    emulator.faults.script("upload", Fault(FaultKind.slow_import, delay_s=8))
    await run_daemon(world)
    await upload(world.inbox / "slow.xlsx", xlsxwriter_bytes(rows_valid(3)))
    await wait_for(lambda: states(world) == [FileState.uncertain], 30, "the file parked")
    [folder] = (world.inbox / "processing").iterdir()
    await wait_for((folder / "slow.xlsx.result.txt").exists, 10, "the parked receipt")
    assert "ON HOLD" in (folder / "slow.xlsx.result.txt").read_text()
    assert json.loads((folder / "slow.xlsx.result.json").read_text())["verdict"] == "uncertain"
    # Its task is looked at again, and when the import ends the file is settled by itself.
    receipt = world.settled("done", "slow.xlsx.result.txt")
    await wait_for(receipt.exists, 40, "slow.xlsx in done/")
    assert "Rows: 3 imported" in receipt.read_text()
    assert not folder.exists()
    assert len(emulator.uploads) == 1


async def test_a_skewed_server_clock_is_reported(make_world, run_daemon, emulator, upload):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script("upload", Fault(FaultKind.skew, skew_s=600))
    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        await drop_and_settle(world, upload)
    [skew] = [e for e in logs if e["event"] == "isales.clock_skew"]
    assert 590 <= skew["skew_s"] <= 610


async def test_a_campaign_that_does_not_exist_is_rejected_without_retry(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.campaigns = {"some-other-campaign"}
    await run_daemon(world)
    text = await drop_and_settle(world, upload, outcome="rejected")
    assert "the campaign does not exist" in text
    assert emulator.uploads == []
    assert len([c for c in emulator.calls if "uploadFileServer" in c.path]) == 1


async def test_the_signed_header_set_is_configurable(make_world, run_daemon, emulator, upload):
    world = make_world(
        isales_extra=FAST + '\nsigned_headers = ["content-type", "host"]', daemon_extra=DAEMON
    )
    await run_daemon(world)
    await drop_and_settle(world, upload)
    assert all(c.status != 401 for c in emulator.calls)
    assert len(emulator.uploads) == 1


async def test_a_scheduled_import_is_tracked_from_its_hour(
    make_world, run_daemon, emulator, upload
):
    # 02:30 server time, submitted at any other time of day: it runs at the next 02:30, which
    # may be nearly a day away. Tracking must wait for it, not give up after track_timeout_s.
    emulator.utc_offset = timedelta(hours=8)
    world = make_world(
        isales_extra=FAST + '\ntrack_timeout_s = 2\nserver_utc_offset = "+08:00"',
        daemon_extra=DAEMON,
        route_extra='schedule = "02:30"',
    )
    await run_daemon(world)
    await upload(world.inbox / "later.xlsx", xlsxwriter_bytes(rows_valid(4)))
    await wait_for(lambda: len(emulator.uploads) == 1, 30, "the scheduled upload")
    [call] = emulator.uploads
    assert (call.hour, call.minute) == ("2", "30")
    await asyncio.sleep(4)  # twice track_timeout_s: still waiting for its hour, not parked
    assert states(world) == [FileState.tracking]
    assert call.scheduled_for is not None
    emulator.advance((call.scheduled_for - emulator.now()).total_seconds() + 1)
    receipt = world.settled("done", "later.xlsx.result.txt")
    await wait_for(receipt.exists, 30, "later.xlsx in done/")
    text = receipt.read_text()
    assert "Scheduled import time: 02:30 server time (UTC+08:00)" in text
    assert "Rows: 4 imported" in text


async def test_an_uncertain_file_is_sent_again_only_on_an_operator_s_word(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    # A 500 on the import: iSales may or may not have acted; no task appears: park it.
    emulator.faults.script("upload", Fault(FaultKind.status, status=500))
    await run_daemon(world)
    await upload(world.inbox / "maybe.xlsx", xlsxwriter_bytes(rows_valid(3)))
    await wait_for(lambda: states(world) == [FileState.uncertain], 30, "the file parked")
    assert emulator.uploads == []
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    [row] = ledger.rows()
    assert "no unowned import task began in its time window" in (row.reason or "")
    ledger.close()
    code, output = await cli(
        "ledger",
        "resolve",
        row.id,
        "--not-imported",
        "--reason",
        "checked in iSales: not imported",
        "--by",
        "ops-anna",
        "--config",
        str(world.config),
    )
    assert code == 0, output
    assert "sends it once more" in output
    await wait_for(world.settled("done", "maybe.xlsx.result.txt").exists, 30, "maybe in done/")
    assert len(emulator.uploads) == 1
    assert list((world.inbox / "processing").iterdir()) == []  # the ON HOLD receipts went too
    ledger = Ledger(world.state_dir / "ledger.sqlite3")
    actors = {t["actor"] for t in ledger.transitions(row.id)}
    ledger.close()
    assert "ops-anna" in actors


async def test_chaos_100_files_30_percent_faults(make_world, run_daemon, emulator, upload):
    world = make_world(
        isales_extra="request_timeout_s = 2\nreconcile_grace_s = 3\nallow_insecure_http = true",
        daemon_extra=DAEMON + "\nmax_parallel_files = 4",
    )
    emulator.faults.chaos(rate=0.3, seed=20261123)
    with stamina.set_testing(True, attempts=5, cap=True):
        await run_daemon(world)
        for i in range(100):
            await upload(
                # Lists differ in length, as real ones do: the record count tells them apart.
                world.inbox / f"chaos-{i:03d}.xlsx",
                xlsxwriter_bytes(rows_valid(1 + i, seed=i)),
            )

        def all_ended() -> bool:
            found = states(world)
            return len(found) >= 100 and all(
                s in (FileState.done, FileState.rejected, FileState.uncertain) for s in found
            )

        await wait_for(all_ended, 240, "all 100 files to end")
    final = Counter(states(world))
    at_most_once(emulator)
    assert final[FileState.done] + final[FileState.rejected] + final[FileState.uncertain] == 100
    for i in range(100):
        name = f"chaos-{i:03d}.xlsx"
        assert (
            world.settled("done", name).exists()
            or world.settled("rejected", name).exists()
            or any((world.inbox / "processing").glob(f"*/{name}"))
        ), name
    print(
        f"\nchaos: {dict(final)}; faults injected: "
        f"{Counter(c.fault.kind.value for c in emulator.calls if c.fault)}"
    )
    assert final[FileState.uncertain] <= 10
