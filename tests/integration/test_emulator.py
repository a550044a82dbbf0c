"""The emulator is as strict as the vendor's documents and as varied as a real server.

Every request here is signed and sent over real HTTP, with the raw bodies a careless client could
send; a file to import is fetched by the emulator over SFTP from the test sshd.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import ACCESS_KEY, SECRET_KEY, VDN, wait_for
from tests.sftpservers import Sshd
from tests.workbooks import xlsxwriter_bytes
from watcher.isales.emulator import VENDOR_SAMPLE_SERVER, Emulator
from watcher.isales.faults import Fault, FaultKind
from watcher.isales.signer import Signer

CAMPAIGN = "c-emulator"
PREFIX = f"/rest/isales/v1/openapi/campaigns/{VDN}"
SERVERS = f"{PREFIX}/file/queryServer"


def upload_path(campaign: str = CAMPAIGN) -> str:
    return f"{PREFIX}/calldatafile/uploadFileServer/{campaign}"


def tasks_path(campaign: str = CAMPAIGN) -> str:
    return f"{PREFIX}/calldatafile/queryDataImportTask/{campaign}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def body(self) -> Any:
        return json.loads(self.text)

    @property
    def code(self) -> str:
        return str(self.body["resultCode"])


class Api:
    """Signed raw requests, as the vendor's demo code sends them."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._host = urlsplit(base_url).netloc
        self._signer = Signer(ACCESS_KEY, SECRET_KEY)

    async def post(self, path: str, body: Any) -> Reply:
        text = json.dumps(body, separators=(",", ":"))
        auth = self._signer.authorization(
            "POST", path, {"host": self._host}, text, at=datetime.now(UTC)
        )
        headers = {
            "Host": self._host,
            "Content-Type": "application/json; charset=UTF-8",
            "Authorization": auth,
        }
        async with self._session.post(
            path, data=text.encode(), headers=headers, allow_redirects=False
        ) as resp:
            return Reply(resp.status, dict(resp.headers), await resp.text())

    async def upload(self, campaign: str = CAMPAIGN, **fields: Any) -> Reply:
        return await self.post(upload_path(campaign), {"serverId": "fs-1", **fields})

    async def tasks(self, campaign: str = CAMPAIGN, **fields: Any) -> Reply:
        return await self.post(tasks_path(campaign), {"offset": 0, "limit": 100, **fields})

    async def task(self, task_id: str) -> dict[str, Any]:
        reply = await self.tasks(importTaskIds=[task_id])
        [found] = [t for t in reply.body["result"] if t["id"] == task_id]
        return dict(found)


@pytest.fixture
async def api(emulator: Emulator) -> AsyncIterator[Api]:
    emulator.campaigns.add(CAMPAIGN)
    async with aiohttp.ClientSession(base_url=emulator.base_url) as session:
        yield Api(session, emulator.base_url)


@pytest.fixture
def folder(sshd: Sshd, request: pytest.FixtureRequest) -> Path:
    """A folder on the file server, below its default path; returns the local path."""
    path = sshd.root / "emulator" / request.node.name.replace("[", "-").replace("]", "")
    path.mkdir(parents=True)
    return path


def workbook(rows: list[list[object]]) -> bytes:
    return xlsxwriter_bytes([[f"s{i}", called, "95555"] for i, called in enumerate(rows)], HEADER)


HEADER = ["sessionId", "called", "caller"]


async def finished(api: Api, task_id: str) -> dict[str, Any]:
    """The task once it has ended ("2" or "3")."""
    for _ in range(300):
        task = await api.task(task_id)
        if task["status"] in ("2", "3"):
            return task
        await asyncio.sleep(0.1)
    pytest.fail(f"task {task_id} did not end within 30 s")


# -- the campaign ---------------------------------------------------------------------------


async def test_an_unknown_campaign_is_refused_on_both_calls(api, emulator):
    upload = await api.upload("no-such-campaign", fileName="a.xlsx")
    tasks = await api.tasks("no-such-campaign")
    assert (upload.status, upload.code) == (200, "0200007")
    assert (tasks.status, tasks.code) == (200, "0200007")
    assert emulator.uploads == []
    assert emulator.tasks == {}


# -- field types and ranges -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "minute", "code"),
    [
        (2, "30", "02000006"),  # a number, not a string
        ("2", 30, "02000006"),
        ("24", "00", "02000007"),
        ("23", "60", "02000007"),
        ("-1", "00", "02000007"),
        ("2a", "00", "02000007"),
        ("", "00", "02000007"),
        ("2", None, "02000010"),
        (None, "30", "02000010"),
    ],
)
async def test_a_bad_hour_or_minute_is_refused(api, emulator, hour, minute, code):
    fields = {k: v for k, v in (("hour", hour), ("minute", minute)) if v is not None}
    reply = await api.upload(fileName="a.xlsx", **fields)
    assert reply.code == code, reply.body
    assert emulator.uploads == []


@pytest.mark.parametrize(("hour", "minute"), [("0", "0"), ("05", "07"), ("23", "59"), ("7", "30")])
async def test_hour_and_minute_as_strings_in_range_are_accepted(api, emulator, hour, minute):
    reply = await api.upload(fileName="a.xlsx", hour=hour, minute=minute)
    assert reply.code == "0200000", reply.body
    [upload] = emulator.uploads
    assert upload.scheduled_for is not None
    local = upload.scheduled_for.astimezone(UTC) + emulator.utc_offset
    assert (local.hour, local.minute) == (int(hour), int(minute))


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (SERVERS, {"offset": "0", "limit": 10}, "02000006"),
        (SERVERS, {"offset": 0, "limit": 101}, "02000007"),
        (SERVERS, {"offset": -1, "limit": 10}, "02000007"),
        (SERVERS, {"offset": 0}, "02000001"),
        (SERVERS, {"offset": 0, "limit": 10, "serverIds": "fs-1"}, "02000006"),
        (SERVERS, {"offset": 0, "limit": 10, "serverIds": [1]}, "02000006"),
        (tasks_path(), {"offset": 0, "limit": 0}, "02000007"),
        (tasks_path(), {"offset": 0, "limit": True}, "02000006"),
        (tasks_path(), {"offset": 0, "limit": 10, "importTaskIds": "1"}, "02000006"),
        (tasks_path(), {"offset": 0, "limit": 10, "importTaskIds": [123]}, "02000006"),
        (upload_path(), {"serverId": "fs-1", "fileName": 7}, "02000006"),
        (upload_path(), {"serverId": "fs-1"}, "02000001"),
        (upload_path(), {"serverId": "fs-1", "fileName": "a.xlsx", "x": 1}, "02000011"),
        (upload_path(), ["fs-1", "a.xlsx"], "0200001"),  # JSON, but not an object
    ],
)
async def test_wrong_types_and_ranges_are_refused(api, emulator, path, body, code):
    reply = await api.post(path, body)
    assert reply.code == code, reply.body
    assert emulator.uploads == []


# -- queryServer ----------------------------------------------------------------------------


async def test_query_server_lists_the_vendor_s_null_entry_first(api):
    everything = (await api.post(SERVERS, {"offset": 0, "limit": 100})).body
    assert everything["count"] == 2
    assert everything["server"][0] == VENDOR_SAMPLE_SERVER
    assert everything["server"][0]["ip"] is None
    assert [s["serverId"] for s in everything["server"]][1:] == ["fs-1"]

    second = (await api.post(SERVERS, {"offset": 1, "limit": 1})).body
    assert (second["count"], [s["serverId"] for s in second["server"]]) == (2, ["fs-1"])
    only = (await api.post(SERVERS, {"offset": 0, "limit": 10, "serverIds": ["fs-1"]})).body
    assert (only["count"], [s["serverId"] for s in only["server"]]) == (1, ["fs-1"])


# -- import results -------------------------------------------------------------------------


async def test_counts_add_up_with_repeats_blacklisted_and_failed_rows(api, emulator, folder):
    emulator.blacklist.add("13812345678")
    rows: list[object] = [
        '[{"calledNo":"13800000001"}]',  # imported
        '[{"calledNo":"13800000001"}]',  # repeats row 1
        "[{'calledNo':13800000002}]",  # imported: the single-quoted form, a number
        '[{"calledNo":"13900000000"}]',  # blacklisted: ends in 0000
        '[{"calledNo":"13812345678","delayTime":"0"}]',  # blacklisted: added above
        "",  # no called value
        '[{"delayTime":"0"}]',  # no called number either
    ]
    data = workbook(rows)
    (folder / "mixed.xlsx").write_bytes(data)
    reply = await api.upload(fileName="mixed.xlsx", filePath=f"/emulator/{folder.name}")
    assert reply.code == "0200000", reply.body
    task = await finished(api, reply.body["importTaskId"])
    assert task["status"] == "2", task
    counts = {k: task[k] for k in ("succNum", "repeatNum", "failNum", "blackNum")}
    assert counts == {"succNum": 2, "repeatNum": 1, "failNum": 2, "blackNum": 2}
    assert sum(counts.values()) == len(rows)


async def test_the_task_filter_can_be_ignored_and_tasks_come_newest_first(api, emulator):
    start = emulator.now() - timedelta(hours=1)
    old, middle, new = (
        emulator.add_foreign_task(CAMPAIGN, rows=1, begin_at=start + timedelta(minutes=m))
        for m in (0, 10, 20)
    )
    emulator.add_foreign_task("another-campaign", rows=1)

    filtered = (await api.tasks(importTaskIds=[old.task_id])).body
    assert [t["id"] for t in filtered["result"]] == [old.task_id]

    emulator.ignore_task_filter = True
    everything = (await api.tasks(importTaskIds=[old.task_id])).body
    assert everything["count"] == 3
    assert [t["id"] for t in everything["result"]] == [new.task_id, middle.task_id, old.task_id]
    second_page = (await api.tasks(importTaskIds=[old.task_id], offset=2, limit=2)).body
    assert (second_page["count"], [t["id"] for t in second_page["result"]]) == (3, [old.task_id])


# -- the clock ------------------------------------------------------------------------------


async def test_naive_times_are_the_server_s_local_time_and_date_stays_gmt(api, emulator):
    emulator.utc_offset = timedelta(hours=8)
    task = emulator.add_foreign_task(
        CAMPAIGN, rows=3, begin_at=datetime(2026, 11, 29, 9, 5, 9, tzinfo=UTC)
    )
    aware = await api.task(task.task_id)
    assert aware["beginTime"] == "2026-11-29T17:05:09.000+08:00"

    emulator.naive_times = True
    ended_local = (emulator.now() + timedelta(hours=8)).replace(tzinfo=None)
    emulator.advance(3600)
    reply = await api.tasks(importTaskIds=[task.task_id])
    [naive] = reply.body["result"]
    assert naive["beginTime"] == "2026-11-29T17:05:09.000"
    end = datetime.fromisoformat(naive["endTime"])
    assert end.tzinfo is None
    assert abs(end - ended_local) < timedelta(seconds=30)
    # The Date header is RFC 7231 GMT of the emulator's (advanced) clock, whatever its zone.
    assert reply.headers["Date"].endswith(" GMT")
    date = parsedate_to_datetime(reply.headers["Date"])
    assert abs(date - emulator.now()) < timedelta(seconds=5)
    assert abs(date - datetime.now(UTC) - timedelta(hours=1)) < timedelta(seconds=5)


async def test_a_scheduled_import_starts_only_when_the_clock_reaches_it(api, emulator, folder):
    emulator.utc_offset = timedelta(hours=8)
    emulator.naive_times = True
    (folder / "later.xlsx").write_bytes(workbook(['[{"calledNo":"13800000001"}]']))
    due_local = (emulator.now() + timedelta(hours=8, minutes=90)).replace(second=0, microsecond=0)
    reply = await api.upload(
        fileName="later.xlsx",
        filePath=f"/emulator/{folder.name}",
        hour=f"{due_local.hour:02d}",
        minute=str(due_local.minute),
    )
    task_id = reply.body["importTaskId"]
    [upload] = emulator.uploads
    assert upload.scheduled_for is not None

    await asyncio.sleep(4 * emulator.import_delay_s)  # an unscheduled import would have ended
    waiting = await api.task(task_id)
    assert waiting["status"] == "0"
    assert "beginTime" not in waiting
    emulator.advance(3600)  # not yet: 30 minutes to go
    await asyncio.sleep(4 * emulator.import_delay_s)
    assert (await api.task(task_id))["status"] == "0"

    emulator.advance(1800)
    task = await finished(api, task_id)
    assert (task["status"], task["succNum"]) == ("2", 1)
    assert task["beginTime"] == due_local.strftime("%Y-%m-%dT%H:%M:00.000")
    assert upload.fetched_sha256 is not None


async def test_a_foreign_task_s_counts_arrive_late(api, emulator):
    emulator.naive_times = True
    begin_at = datetime(2026, 11, 28, 23, 59, 30)  # noqa: DTZ001 - the server's local time
    task = emulator.add_foreign_task(CAMPAIGN, rows=7, begin_at=begin_at, counts_after_s=0.6)
    running = await api.task(task.task_id)
    assert running["status"] == "1"
    assert "succNum" not in running
    assert running["beginTime"] == "2026-11-28T23:59:30.000"
    await wait_for(lambda: task.status == "2", 10, "the counts")
    done = await api.task(task.task_id)
    counts = {k: done[k] for k in ("succNum", "repeatNum", "failNum", "blackNum")}
    assert counts == {"succNum": 7, "repeatNum": 0, "failNum": 0, "blackNum": 0}


# -- faults ---------------------------------------------------------------------------------


async def test_a_redirect_loop_points_to_the_same_path_and_does_nothing(api, emulator):
    emulator.faults.script("upload", Fault.parse("redirect"))
    reply = await api.upload(fileName="a.xlsx")
    assert (reply.status, reply.headers["Location"]) == (302, upload_path())
    async with aiohttp.ClientSession(base_url=emulator.base_url) as session:
        with pytest.raises(aiohttp.TooManyRedirects):  # a client that follows it goes round
            async with session.get(upload_path(), max_redirects=3):
                pass
    assert emulator.uploads == []


async def test_a_redirect_elsewhere(api, emulator):
    emulator.faults.script("query_server", Fault.parse("redirect:/elsewhere"))
    reply = await api.post(SERVERS, {"offset": 0, "limit": 10})
    assert (reply.status, reply.headers["Location"]) == (302, "/elsewhere")
    assert (await api.post(SERVERS, {"offset": 0, "limit": 10})).code == "0200000"


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("accept_then_502", 502),
        ("accept_then_503", 503),
        ("accept_then_504", 504),
        ("accept_then_status:500", 500),
    ],
)
async def test_accept_then_a_gateway_status(api, emulator, fault, status):
    emulator.faults.script("upload", Fault.parse(fault))
    reply = await api.upload(fileName="a.xlsx")
    assert reply.status == status
    assert "html" in reply.headers["Content-Type"]
    assert len(emulator.uploads) == 1  # it acted all the same


async def test_reject_4xx_answers_400_with_a_result_code(api, emulator):
    emulator.faults.script("upload", Fault(FaultKind.reject_4xx))
    reply = await api.upload(fileName="a.xlsx")
    assert (reply.status, reply.code) == (400, "0200001")
    assert reply.body["resultDesc"]
    assert emulator.uploads == []


async def test_shape_faults_bend_the_reply(api, emulator):
    emulator.add_foreign_task(CAMPAIGN, rows=2)
    emulator.faults.script("query_server", Fault.parse("null_server"), Fault.parse("string_list"))
    emulator.faults.script(
        "query_tasks",
        Fault.parse("string_list"),
        Fault.parse("bad_count"),
        Fault.parse("bad_begin_time"),
    )
    page = {"offset": 0, "limit": 10}

    null_server = (await api.post(SERVERS, page)).body
    assert (null_server["resultCode"], null_server["server"][0]) == ("0200000", None)
    string_server = (await api.post(SERVERS, page)).body
    assert isinstance(string_server["server"], str)

    string_result = await api.tasks()
    assert (string_result.status, string_result.code) == (200, "0200000")
    assert isinstance(string_result.body["result"], str)
    assert (await api.tasks()).body["count"] == "many"
    [task] = (await api.tasks()).body["result"]
    assert task["beginTime"] == 12345
    assert isinstance((await api.tasks()).body["result"][0]["beginTime"], str)  # one call each


def test_fault_names_parse_as_on_the_command_line():
    assert Fault.parse("redirect") == Fault(FaultKind.redirect, status=302)
    assert Fault.parse("redirect:/elsewhere").location == "/elsewhere"
    assert Fault.parse("accept_then_504").kind is FaultKind.accept_then_504
    assert Fault.parse("accept_then_status:504").status == 504
    for name in ("reject_4xx", "null_server", "string_list", "bad_count", "bad_begin_time"):
        assert Fault.parse(name).kind is FaultKind(name)
    with pytest.raises(ValueError, match="nonsense"):
        Fault.parse("nonsense")
