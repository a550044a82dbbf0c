"""The client never guesses: what it cannot know is ambiguous; what it says holds no secret."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import pytest
import stamina
import structlog

from tests.conftest import ACCESS_KEY, SECRET_KEY, VDN, wait_for
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher.daemon import Daemon
from watcher.errors import (
    ApiAmbiguousError,
    ApiRejectedError,
    ApiReplyError,
    ApiUnavailableError,
    ConfigError,
)
from watcher.isales.client import IsalesClient
from watcher.isales.faults import Fault, FaultKind
from watcher.ledger import Ledger
from watcher.settings import IsalesSettings, load_settings

FAST = "request_timeout_s = 1\nreconcile_grace_s = 2\nallow_insecure_http = true"
DAEMON = "retry_backoff_s = 0.2\nmax_backoff_s = 1"


def settings_for(url: str, **extra) -> IsalesSettings:
    return IsalesSettings(
        base_url=url,
        vdn_id=VDN,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        allow_insecure_http=True,
        request_timeout_s=1,
        **extra,
    )


@pytest.fixture
def campaign(emulator) -> str:
    emulator.campaigns.add("c-client")
    return "c-client"


async def test_a_redirect_is_never_followed_and_names_where_it_pointed(emulator, campaign):
    emulator.faults.script("query_server", Fault(FaultKind.redirect))
    emulator.faults.script("upload", Fault(FaultKind.redirect, location="/elsewhere"))
    async with IsalesClient(settings_for(emulator.base_url)) as client:
        with pytest.raises(ApiUnavailableError) as loop:
            await client.query_servers(retry=False)
        with pytest.raises(ApiUnavailableError) as away:
            await client.upload(
                campaign, server_id="fs-1", file_path="", file_name="x.xlsx", hour_minute=None
            )
    assert "HTTP 302 redirecting to" in str(loop.value)
    assert "/elsewhere" in str(away.value)
    for text in (str(loop.value), str(away.value)):
        assert "auth-v2/" not in text
        assert SECRET_KEY not in text
    assert emulator.uploads == []  # and nothing was followed to another address
    assert len([c for c in emulator.calls if "uploadFileServer" in c.path]) == 1


async def test_a_connection_that_never_opens_is_not_sent():
    # A silent firewall: the listener's accept queue is full, so the SYN is never answered.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            async with IsalesClient(settings_for(f"http://127.0.0.1:{port}")) as client:
                started = time.monotonic()
                with pytest.raises(ApiUnavailableError, match="nothing was sent"):
                    await client.upload(
                        "c", server_id="fs-1", file_path="", file_name="x.xlsx", hour_minute=None
                    )
                assert time.monotonic() - started < 5
        finally:
            for filler in fillers:
                filler.close()


async def test_a_request_sent_and_not_answered_is_ambiguous(emulator, campaign):
    emulator.faults.script("upload", Fault(FaultKind.delay, delay_s=3))
    async with IsalesClient(settings_for(emulator.base_url)) as client:
        with pytest.raises(ApiAmbiguousError, match="did not answer within 1 s"):
            await client.upload(
                campaign, server_id="fs-1", file_path="", file_name="x.xlsx", hour_minute=None
            )


@pytest.mark.parametrize(
    ("endpoint", "fault", "words"),
    [
        ("query_server", FaultKind.string_list, "queryServer: field 'server' is str"),
        ("query_server", FaultKind.bad_count, "queryServer: field 'count' is 'many'"),
        ("query_tasks", FaultKind.string_list, "queryDataImportTask: field 'result' is str"),
        ("query_tasks", FaultKind.bad_count, "queryDataImportTask: field 'count' is 'many'"),
        ("query_tasks", FaultKind.bad_begin_time, "field 'beginTime' is int, expected a string"),
    ],
)
async def test_a_reply_of_an_unexpected_shape_is_one_clear_error(
    emulator, campaign, endpoint, fault, words
):
    if endpoint == "query_tasks":
        emulator.add_foreign_task(campaign, rows=3)
    emulator.faults.script(endpoint, Fault(fault))
    async with IsalesClient(settings_for(emulator.base_url)) as client:
        call = (
            client.query_servers() if endpoint == "query_server" else client.query_tasks(campaign)
        )
        with pytest.raises(ApiReplyError) as error, stamina.set_testing(True, attempts=1):
            await call
    assert words in str(error.value)


async def test_the_vendor_s_null_server_entry_is_read(emulator):
    emulator.faults.script("query_server", Fault(FaultKind.null_server))
    async with IsalesClient(settings_for(emulator.base_url)) as client:
        with pytest.raises(ApiReplyError, match=r"server\[0\] is NoneType, expected an object"):
            await client.query_servers(retry=False)
        servers = await client.query_servers()  # the entry with null fields, then fs-1
    assert servers[0].ip is None
    assert servers[-1].server_id == "fs-1"


async def test_a_4xx_body_is_read_for_its_result_code(emulator, campaign):
    emulator.faults.script("upload", Fault(FaultKind.reject_4xx))
    async with IsalesClient(settings_for(emulator.base_url)) as client:
        with pytest.raises(ApiRejectedError) as error:
            await client.upload(
                campaign, server_id="fs-1", file_path="", file_name="x.xlsx", hour_minute=None
            )
    assert error.value.code == "0200001"


async def test_a_base_path_that_is_not_the_registered_default_path_stops_the_start(
    make_world, sshd
):
    world = make_world(server_id="fs-1")
    text = world.config.read_text().replace(
        f'base_path = "{sshd.root}"', f'base_path = "{sshd.root.parent}"'
    )
    world.config.write_text(text)
    with pytest.raises(ConfigError) as error:
        await asyncio.wait_for(Daemon(load_settings(world.config)).run(), 30)
    assert str(sshd.root.parent) in str(error.value)
    assert str(sshd.root) in str(error.value)


async def test_a_long_retry_after_holds_up_nothing_but_its_file(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON + "\nmax_parallel_files = 2")
    emulator.faults.script("upload", Fault(FaultKind.status, status=429, retry_after_s=3600))
    daemon = await run_daemon(world)
    await upload(world.inbox / "first.xlsx", xlsxwriter_bytes(rows_valid(3, seed=1)))
    await wait_for(lambda: len(emulator.calls) >= 2, 20, "the 429")
    await upload(world.inbox / "second.xlsx", xlsxwriter_bytes(rows_valid(3, seed=2)))
    # Capped at max_backoff_s (1 s), and the other file of the same campaign went meanwhile.
    await wait_for(world.settled("done", "second.xlsx.result.txt").exists, 30, "second done")
    await wait_for(world.settled("done", "first.xlsx.result.txt").exists, 30, "first done")
    assert len(emulator.uploads) == 2
    assert daemon.health.liveness()[0]  # the watch loop went round all along


async def test_tracking_pages_through_when_the_filter_is_ignored_and_asks_once_per_round(
    make_world, run_daemon, emulator, upload
):
    emulator.ignore_task_filter = True
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON + "\nmax_parallel_files = 4")
    for _ in range(120):  # older tasks of the campaign: ours are on the first page or beyond
        emulator.add_foreign_task(world.campaign, rows=7)
    emulator.faults.script("upload", *[Fault(FaultKind.slow_import, delay_s=3)] * 6)
    await run_daemon(world)
    for i in range(6):
        await upload(world.inbox / f"t{i}.xlsx", xlsxwriter_bytes(rows_valid(3, seed=30 + i)))
    for i in range(6):
        await wait_for(world.settled("done", f"t{i}.xlsx.result.txt").exists, 60, f"t{i} done")
    polls = [c for c in emulator.calls if "queryDataImportTask" in c.path]
    # Six imports tracked for 3 s at 0.2 s intervals would be ~90 polls one by one.
    assert len(polls) < 60, len(polls)


SECRETS = (ACCESS_KEY, SECRET_KEY, "auth-v2/")


def _leaks(texts) -> list[str]:
    return [
        f"{secret!r} in {text[:200]!r}" for text in texts for secret in SECRETS if secret in text
    ]


async def test_no_error_kind_puts_a_secret_in_logs_ledger_or_receipts(
    make_world, run_daemon, emulator, upload
):
    world = make_world(isales_extra=FAST, daemon_extra=DAEMON)
    emulator.faults.script(
        "upload",
        Fault(FaultKind.redirect),
        Fault(FaultKind.status, status=401),
        Fault(FaultKind.status, status=403),
        Fault(FaultKind.status, status=429, retry_after_s=0.1),
        Fault(FaultKind.status, status=500),
        Fault(FaultKind.accept_then_502),
        Fault(FaultKind.accept_then_504),
        Fault(FaultKind.broken_body),
        Fault(FaultKind.drop_after_accept),
        Fault(FaultKind.delay, delay_s=2),
        Fault(FaultKind.reject_4xx),
    )
    emulator.faults.script(
        "query_tasks",
        Fault(FaultKind.string_list),
        Fault(FaultKind.bad_count),
        Fault(FaultKind.bad_begin_time),
        Fault(FaultKind.redirect),
        Fault(FaultKind.status, status=401),
    )
    with structlog.testing.capture_logs() as logs:
        await run_daemon(world)
        for i in range(9):
            await upload(world.inbox / f"s{i}.xlsx", xlsxwriter_bytes(rows_valid(3, seed=40 + i)))

        def all_ended() -> bool:
            ledger = Ledger(world.state_dir / "ledger.sqlite3")
            try:
                found = ledger.rows()
            finally:
                ledger.close()
            return len(found) == 9 and all(r.state.is_terminal for r in found)

        await wait_for(all_ended, 120, "every file to end")
    kinds = Counter(c.fault.kind.value for c in emulator.calls if c.fault)
    assert kinds["redirect"] == 2, kinds
    assert kinds["reject_4xx"] == 1, kinds
    texts = [repr(event) for event in logs]
    for path in world.state_dir.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    for path in world.inbox.rglob("*.result.*"):
        texts.append(path.read_text())
    assert _leaks(texts) == []
    assert any("HTTP 302 redirecting" in e.get("error", "") for e in logs)
    names = Counter((u.campaign_id, u.file_name) for u in emulator.uploads)
    assert all(n == 1 for n in names.values()), names


async def test_the_locale_header_is_sent_and_signed(emulator):
    settings = settings_for(
        emulator.base_url, locale="en_US", signed_headers=("host", "locale", "content-type")
    )
    async with IsalesClient(settings) as client:
        servers = await client.query_servers(retry=False)
    assert servers[-1].server_id == "fs-1"
    assert all(c.status == 200 for c in emulator.calls)  # the emulator checked the signature
