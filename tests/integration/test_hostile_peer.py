"""A peer that lies, stutters or echoes: the client reads it whole and says only our own words."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp.web
import pytest
import stamina

from tests.conftest import ACCESS_KEY, SECRET_KEY, VDN
from watcher.errors import ApiAmbiguousError, ApiRejectedError, ApiReplyError
from watcher.isales.client import IsalesClient
from watcher.settings import IsalesSettings

Handler = Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.StreamResponse]]


class Peer:
    """An HTTP server whose every answer the test writes."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.bodies: list[dict[str, Any]] = []
        self.url = ""

    async def dispatch(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self.bodies.append(json.loads(await request.text()))
        assert self.handler is not None
        return await self.handler(request)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    found = Peer()
    app = aiohttp.web.Application()
    app.router.add_post("/{tail:.*}", found.dispatch)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield found
    await runner.cleanup()


def client_for(peer: Peer) -> IsalesClient:
    return IsalesClient(
        IsalesSettings(
            base_url=peer.url,
            vdn_id=VDN,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            allow_insecure_http=True,
            request_timeout_s=5,
        )
    )


def ok(**extra: Any) -> dict[str, Any]:
    return {"resultCode": "0200000", "resultDesc": "success", **extra}


def tasks(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"t{n}", "status": "2", "succNum": 1, "beginTime": "2026-11-29T10:00:00.000+00:00"}
        for n in range(first, first + count)
    ]


async def test_a_reply_that_arrives_in_pieces_is_read_whole(peer):
    payload = json.dumps(ok(result=tasks(0, 100), count=100)).encode()

    async def stutter(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(payload), 4096):
            await response.write(payload[start : start + 4096])
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    peer.handler = stutter
    with stamina.set_testing(True, attempts=1):
        async with client_for(peer) as client:
            page = await client.query_tasks("c1")
    assert len(page.tasks) == 100


async def test_a_202_with_success_is_accepted_and_a_400_with_success_is_ambiguous(peer):
    async def accepted(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response(ok(importTaskId="t-202"), status=202)

    async def contradicts(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response(ok(importTaskId="t-400"), status=400)

    async with client_for(peer) as client:
        peer.handler = accepted
        assert (
            await client.upload(
                "c1", server_id="s", file_path="", file_name="a.xlsx", hour_minute=None
            )
            == "t-202"
        )
        peer.handler = contradicts
        with pytest.raises(ApiAmbiguousError, match="HTTP 400 with a success code"):
            await client.upload(
                "c1", server_id="s", file_path="", file_name="a.xlsx", hour_minute=None
            )


async def test_deeply_nested_json_is_a_reply_error_not_a_crash(peer):
    async def deep(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.Response(text="[" * 100_000 + "]" * 100_000)

    peer.handler = deep
    async with client_for(peer) as client:
        with pytest.raises(ApiReplyError, match="not JSON"):
            await client.upload(
                "c1", server_id="s", file_path="", file_name="a.xlsx", hour_minute=None
            )


async def test_an_echoed_signature_or_key_never_reaches_our_error_text(peer):
    async def echo(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        desc = f"bad request: {request.headers['Authorization']} key={ACCESS_KEY} sk={SECRET_KEY}"
        return aiohttp.web.json_response({"resultCode": "0200001", "resultDesc": desc})

    peer.handler = echo
    async with client_for(peer) as client:
        with pytest.raises(ApiRejectedError) as error:
            await client.upload(
                "c1", server_id="s", file_path="", file_name="a.xlsx", hour_minute=None
            )
    text = str(error.value)
    assert "bad request" in text
    for secret in (ACCESS_KEY, SECRET_KEY, "auth-v2/"):
        assert secret not in text


async def test_a_server_listing_that_ignores_offset_ends(peer):
    async def same_page(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        server = {"serverId": "s1", "ip": "h", "port": "22", "userName": "u", "filePath": "/"}
        return aiohttp.web.json_response(ok(server=[server], count=10**9))

    peer.handler = same_page
    async with client_for(peer) as client:
        servers = await asyncio.wait_for(client.query_servers(retry=False), 10)
    assert [s.server_id for s in servers] == ["s1"]
    assert len(peer.bodies) <= 2


async def test_tasks_are_found_from_both_ends_when_the_filter_is_ignored(peer):
    total = 3000  # oldest first, as some consoles list them; our task is the newest

    async def oldest_first(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        body = await request.json()
        offset = body["offset"]
        return aiohttp.web.json_response(
            ok(result=tasks(offset, min(100, total - offset)), count=total)
        )

    peer.handler = oldest_first
    async with client_for(peer) as client:
        found = await client.find_tasks("c1", [f"t{total - 1}"])
    assert list(found) == [f"t{total - 1}"]
    assert len(peer.bodies) <= 3  # the filtered ask, the first page, the last page


async def test_tasks_are_found_when_the_listing_gives_no_count(peer):
    async def no_count(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        offset = (await request.json())["offset"]
        return aiohttp.web.json_response(ok(result=tasks(offset, min(100, 350 - offset))))

    peer.handler = no_count
    async with client_for(peer) as client:
        found = await client.find_tasks("c1", ["t320"])
    assert list(found) == ["t320"]


async def test_an_echo_in_any_case_or_encoding_and_in_err_msg_is_redacted(peer):
    async def echo(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        auth = request.headers["Authorization"]
        if "uploadFileServer" in request.path:
            desc = f"{auth.upper()} {auth.replace('/', '%2F')} " + "x" * 280 + ACCESS_KEY
            return aiohttp.web.json_response({"resultCode": "0200001", "resultDesc": desc})
        task = {"id": "t1", "status": "3", "errMsg": f"bad header {auth}"}
        return aiohttp.web.json_response(ok(result=[task], count=1))

    peer.handler = echo
    async with client_for(peer) as client:
        with pytest.raises(ApiRejectedError) as error:
            await client.upload(
                "c1", server_id="s", file_path="", file_name="a.xlsx", hour_minute=None
            )
        page = await client.query_tasks("c1")
    for text in (str(error.value), page.tasks[0].err_msg):
        lowered = text.lower()
        assert "auth-v2" not in lowered
        assert ACCESS_KEY.lower() not in lowered
        assert ACCESS_KEY[:4].lower() + "…" not in lowered
