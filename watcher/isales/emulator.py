"""An emulator of the three CC-iSales calls the daemon uses, for tests, ``demo`` and staging.

It is at least as strict as the vendor's documents: it checks the C2 signature, that the campaign
exists, and every request field's type and range. It imports like the real server: some time after
``uploadFileServer`` (or at the scheduled hour and minute) it fetches the file over SFTP from the
registered file server and moves the task from "0" to "1" to "2" (or "3" with ``errMsg``), with
counts that vary like a real server's (repeated numbers, blacklisted numbers, rows without one).

Its clock can be moved (:meth:`Emulator.advance`), and it can show its times in a zone of its own,
with or without the offset, because real servers do both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import posixpath
import re
import secrets
import ssl
import time
from collections.abc import Callable, Container, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import aiohttp.web
import asyncssh
import structlog
from python_calamine import CalamineError

from watcher.isales.emulator_rules import (
    Blacklist,
    ImportCounts,
    RefusedError,
    id_list,
    page_of,
    schedule_of,
    tally_rows,
    upload_fields,
)
from watcher.isales.faults import SHAPES, Fault, FaultKind, FaultPlan, gateway_status, reshape
from watcher.isales.signer import Signer

__all__ = (
    "VENDOR_SAMPLE_SERVER",
    "Blacklist",
    "Call",
    "Emulator",
    "ImportCounts",
    "RegisteredServer",
    "TaskRecord",
    "UploadRecord",
)

log = structlog.get_logger(__name__)

_AUTH = re.compile(
    r"^auth-v2/(?P<ak>[^/]+)/(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)/(?P<names>[a-z0-9;-]+)/(?P<sig>[0-9a-f]{64})$"
)
_BODY = aiohttp.web.RequestKey("body", dict[str, Any])
_FAULT = aiohttp.web.RequestKey("fault", object)
_ENDPOINTS = {
    "queryServer": "query_server",
    "uploadFileServer": "upload",
    "queryDataImportTask": "query_tasks",
}
_PREFIX = "/rest/isales/v1/openapi/campaigns/{vdn}"

# The first entry of the vendor's own queryServer example: a server with no address at all.
VENDOR_SAMPLE_SERVER: dict[str, str | None] = {
    "port": None,
    "ip": None,
    "filePath": None,
    "userName": "10",
    "serverId": "164681924997097701747271557174",
}


def _endpoint(path: str) -> str:
    return next((name for part, name in _ENDPOINTS.items() if f"/{part}" in path), "*")


@dataclass(frozen=True)
class Call:
    """One request the emulator received."""

    path: str
    status: int
    fault: Fault | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass
class RegisteredServer:
    """A file server as registered in iSales, with what the emulator needs to log in to it."""

    server_id: str
    ip: str
    port: int
    user_name: str
    file_path: str  # the server's default path
    connect_options: dict[str, Any] = field(default_factory=dict)  # extra asyncssh.connect kwargs


@dataclass
class TaskRecord:
    """An import task the emulator runs (or one an operator made by hand in the console)."""

    task_id: str
    campaign_id: str
    created_at: datetime  # aware; the listing is newest first by this
    status: str = "0"
    succ_num: int | None = None
    repeat_num: int | None = None
    fail_num: int | None = None
    black_num: int | None = None
    err_msg: str = ""
    begun_at: datetime | None = None  # aware
    ended_at: datetime | None = None  # aware

    def finish(self, counts: ImportCounts, at: datetime) -> None:
        self.succ_num, self.repeat_num = counts.succ_num, counts.repeat_num
        self.fail_num, self.black_num = counts.fail_num, counts.black_num
        self.status, self.ended_at = "2", max(at, self.begun_at or at)

    def fail(self, err_msg: str, at: datetime) -> None:
        self.status, self.err_msg, self.ended_at = "3", err_msg, max(at, self.begun_at or at)

    def as_json(self, show: Callable[[datetime], str]) -> dict[str, Any]:
        """The task as ``queryDataImportTask`` lists it; ``show`` formats a time."""
        reply: dict[str, Any] = {"id": self.task_id, "status": self.status, "errMsg": self.err_msg}
        for key, value in (
            ("succNum", self.succ_num),
            ("repeatNum", self.repeat_num),
            ("failNum", self.fail_num),
            ("blackNum", self.black_num),
        ):
            if value is not None:
                reply[key] = value
        if self.begun_at is not None:
            reply["beginTime"] = show(self.begun_at)
        if self.ended_at is not None:
            reply["endTime"] = show(self.ended_at)
        return reply


@dataclass
class UploadRecord:
    """One accepted ``uploadFileServer`` call and what the emulator's own fetch found."""

    campaign_id: str
    server_id: str
    file_path: str
    file_name: str
    hour: str | None
    minute: str | None
    task_id: str
    scheduled_for: datetime | None = None  # aware: when a scheduled import starts
    fetched_sha256: str | None = None
    fetch_error: str | None = None


def _reply(code: str = "0200000", desc: str = "success", **extra: Any) -> aiohttp.web.Response:
    body = {"resultCode": code, "resultDesc": desc, "returnCode": code, "returnDesc": desc, **extra}
    return aiohttp.web.json_response(body)


class Emulator:
    """The emulated server. Use :meth:`start` and :meth:`close`, or mount :attr:`app` yourself.

    Attributes that tests change: :attr:`campaigns`, :attr:`blacklist`, :attr:`faults`,
    :attr:`ignore_task_filter`, :attr:`utc_offset`, :attr:`naive_times`, :attr:`clock_offset_s`.

    Args:
        access_key: the AK it accepts.
        secret_key: the SK it verifies signatures with.
        vdn_id: the VDN in the paths.
        servers: the registered file servers.
        campaigns: the campaign ids that exist; any other is answered ``0200007``.
        import_delay_s: how long a task stays "0" and then "1".
        max_skew_s: the signature timestamp tolerance (against the real clock: the clients' clocks
            do not move with :meth:`advance`).
        blacklist: the blacklisted called numbers; default: every number ending in ``0000``.
        utc_offset: the server's own time zone.
        naive_times: write ``beginTime``/``endTime`` in local time without an offset.
    """

    def __init__(
        self,
        *,
        access_key: str,
        secret_key: str,
        vdn_id: int,
        servers: list[RegisteredServer],
        campaigns: set[str],
        import_delay_s: float = 0.3,
        max_skew_s: float = 300.0,
        blacklist: Container[str] | None = None,
        utc_offset: timedelta = timedelta(0),
        naive_times: bool = False,
    ) -> None:
        self._signer = Signer(access_key, secret_key)
        self.vdn_id = vdn_id
        self.servers = {server.server_id: server for server in servers}
        self.campaigns = campaigns
        self.import_delay_s = import_delay_s
        self.max_skew_s = max_skew_s
        self.blacklist: Container[str] = Blacklist() if blacklist is None else blacklist
        self.utc_offset = utc_offset
        self.naive_times = naive_times
        self.ignore_task_filter = False  # the filter is in the vendor's sample, not its table
        self.uploads: list[UploadRecord] = []
        self.tasks: dict[str, TaskRecord] = {}
        self.calls: list[Call] = []  # every request, in order
        self.faults = FaultPlan()
        self.base_url = ""
        self._clock_offset_s = 0.0
        self._clock_moved = asyncio.Event()
        self._ids = itertools.count(int.from_bytes(secrets.token_bytes(4), "big"))
        self._jobs: set[asyncio.Task[None]] = set()
        self._redirect_loops: set[str] = set()
        self._runner: aiohttp.web.AppRunner | None = None
        prefix = _PREFIX.format(vdn=vdn_id)
        self.app = aiohttp.web.Application(middlewares=[self._authenticate])
        self.app.router.add_post(f"{prefix}/file/queryServer", self._query_server)
        self.app.router.add_post(
            prefix + "/calldatafile/uploadFileServer/{campaign}", self._upload_file_server
        )
        self.app.router.add_post(
            prefix + "/calldatafile/queryDataImportTask/{campaign}", self._query_import_task
        )

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on ``host:port`` (0: any free port), over TLS with a context; returns the URL."""
        self._runner = aiohttp.web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        scheme = "https" if ssl_context else "http"
        self.base_url = f"{scheme}://{host}:{self._runner.addresses[0][1]}"
        return self.base_url

    async def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the clock ----------------------------------------------------------------------------

    @property
    def clock_offset_s(self) -> float:
        """How far the emulator's clock is ahead of the real one."""
        return self._clock_offset_s

    @clock_offset_s.setter
    def clock_offset_s(self, seconds: float) -> None:
        self._clock_offset_s = seconds
        self._clock_moved.set()  # wake the scheduled imports, which look at the clock again
        self._clock_moved = asyncio.Event()

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward (scheduled imports that fall due start)."""
        self.clock_offset_s += seconds

    def now(self) -> datetime:
        """The emulator's time: real UTC now plus :attr:`clock_offset_s` (aware, UTC)."""
        return datetime.now(UTC) + timedelta(seconds=self._clock_offset_s)

    def show_time(self, at: datetime) -> str:
        """A time as the server writes it: ``2022-03-11T07:27:09.000+00:00`` in its own zone."""
        local = at.astimezone(timezone(self.utc_offset))
        if self.naive_times:
            local = local.replace(tzinfo=None)
        return local.isoformat(timespec="milliseconds")

    def _aware(self, at: datetime) -> datetime:
        """A naive time is the server's local time."""
        return at if at.tzinfo is not None else at.replace(tzinfo=timezone(self.utc_offset))

    def _next_occurrence(self, hour: int, minute: int) -> datetime:
        local = self.now().astimezone(timezone(self.utc_offset))
        due = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return due if due > local else due + timedelta(days=1)

    async def _sleep_until(self, due: datetime) -> None:
        while (left_s := (due - self.now()).total_seconds()) > 0:
            moved = self._clock_moved
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left_s):
                    await moved.wait()

    # -- tasks nobody uploaded ------------------------------------------------------------------

    def add_foreign_task(
        self,
        campaign_id: str,
        *,
        rows: int,
        status: str = "2",
        begin_at: datetime | None = None,
        counts_after_s: float = 0.0,
    ) -> TaskRecord:
        """A task no ``uploadFileServer`` made: an operator importing by hand in the console.

        Args:
            campaign_id: its campaign.
            rows: its records; all count as ``succNum`` once it is finished.
            status: the status it has (after ``counts_after_s``).
            begin_at: its begin time (a naive one is the server's local time); default now.
            counts_after_s: if positive, it shows "1" without counts for that many (real)
                seconds first.
        """
        begun_at = self.now() if begin_at is None else self._aware(begin_at)
        task = self._new_task(campaign_id, created_at=begun_at)
        task.begun_at = begun_at
        if counts_after_s > 0:
            task.status = "1"
            self._spawn(self._end_foreign_later(task, status, rows, counts_after_s))
        else:
            self._end_foreign(task, status, rows)
        return task

    def _end_foreign(self, task: TaskRecord, status: str, rows: int) -> None:
        if status == "2":
            task.finish(ImportCounts(succ_num=rows), self.now())
        elif status == "3":
            task.fail("file format error", self.now())
        else:
            task.status = status

    async def _end_foreign_later(
        self, task: TaskRecord, status: str, rows: int, after_s: float
    ) -> None:
        await asyncio.sleep(after_s)
        self._end_foreign(task, status, rows)

    def _new_task(self, campaign_id: str, *, created_at: datetime) -> TaskRecord:
        task = TaskRecord(f"{next(self._ids):030d}", campaign_id, created_at)
        self.tasks[task.task_id] = task
        return task

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        job = asyncio.create_task(work)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    # -- signature, faults, errors -------------------------------------------------------------

    @aiohttp.web.middleware
    async def _authenticate(
        self, request: aiohttp.web.Request, handler: Any
    ) -> aiohttp.web.StreamResponse:
        try:
            response = await self._answer(request, handler)
        except aiohttp.web.HTTPException as exc:
            self.calls.append(Call(request.path, exc.status))
            raise
        response.headers.setdefault("Date", format_datetime(self.now(), usegmt=True))
        return response

    async def _answer(
        self, request: aiohttp.web.Request, handler: Any
    ) -> aiohttp.web.StreamResponse:
        if request.method != "POST":
            # A client following a redirect: a loop goes on, anything else is not an API.
            if request.path in self._redirect_loops:
                self.calls.append(Call(request.path, 302))
                return aiohttp.web.Response(status=302, headers={"Location": request.path})
            response: aiohttp.web.StreamResponse = await handler(request)
            return response
        body = await request.text()
        if not self._is_signed(request, body):
            self.calls.append(Call(request.path, 401))
            return aiohttp.web.json_response({"error": "unauthorized"}, status=401)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            self.calls.append(Call(request.path, 200))
            return _reply("0200001", "the body is not a JSON object")
        request[_BODY] = parsed
        fault = self.faults.next_fault(_endpoint(request.path))
        request[_FAULT] = fault
        response = await self._misbehave(request, handler, fault)
        self.calls.append(Call(request.path, response.status, fault))
        return response

    async def _misbehave(
        self, request: aiohttp.web.Request, handler: Any, fault: Fault | None
    ) -> aiohttp.web.StreamResponse:
        if fault is None:
            return await self._handle(request, handler)
        log.info("emulator.fault", path=request.path, fault=fault.kind.value, status=fault.status)
        early = self._refuse(request, fault)
        if early is not None:
            return early
        if fault.kind is FaultKind.delay:
            await asyncio.sleep(fault.delay_s)
        response = await self._handle(request, handler)
        return self._bend(request, response, fault)

    async def _handle(
        self, request: aiohttp.web.Request, handler: Any
    ) -> aiohttp.web.StreamResponse:
        try:
            response: aiohttp.web.StreamResponse = await handler(request)
        except RefusedError as exc:
            return _reply(exc.code, exc.desc)
        return response

    def _refuse(self, request: aiohttp.web.Request, fault: Fault) -> aiohttp.web.Response | None:
        """The faults that answer without acting."""
        if fault.kind is FaultKind.status:
            headers = {}
            if fault.retry_after_s is not None:
                headers["Retry-After"] = f"{fault.retry_after_s:g}"
            return aiohttp.web.json_response(
                {"error": f"HTTP {fault.status}"}, status=fault.status, headers=headers
            )
        if fault.kind is FaultKind.redirect:
            location = fault.location or request.path
            if location == request.path:
                self._redirect_loops.add(location)
            status = fault.status if 300 <= fault.status < 400 else 302
            return aiohttp.web.Response(status=status, headers={"Location": location})
        if fault.kind is FaultKind.reject_4xx:
            desc = "parameter error: the request was refused"
            body = {"resultCode": "0200001", "resultDesc": desc}
            return aiohttp.web.json_response(
                {**body, "returnCode": "0200001", "returnDesc": desc}, status=400
            )
        return None

    def _bend(
        self, request: aiohttp.web.Request, response: aiohttp.web.StreamResponse, fault: Fault
    ) -> aiohttp.web.StreamResponse:
        """The faults that act, then answer wrongly."""
        gateway = gateway_status(fault)
        if gateway is not None:
            return aiohttp.web.Response(
                status=gateway, text=f"<html>{gateway} Gateway</html>", content_type="text/html"
            )
        if fault.kind is FaultKind.drop_after_accept:
            assert request.transport is not None
            request.transport.abort()  # the work is done; the answer never leaves
        elif fault.kind is FaultKind.broken_body:
            return aiohttp.web.Response(
                status=200, text='{"resultCode": "0200', content_type="application/json"
            )
        elif fault.kind is FaultKind.skew:
            at = self.now() + timedelta(seconds=fault.skew_s)
            response.headers["Date"] = format_datetime(at, usegmt=True)
        elif fault.kind in SHAPES and isinstance(response, aiohttp.web.Response):
            body = json.loads(response.text or "{}")
            return aiohttp.web.json_response(reshape(fault.kind, body))
        return response

    def _is_signed(self, request: aiohttp.web.Request, body: str) -> bool:
        match = _AUTH.match(request.headers.get("Authorization", ""))
        if match is None or match["ak"] != self._signer.access_key:
            return False
        at = datetime.strptime(match["ts"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if abs((datetime.now(UTC) - at).total_seconds()) > self.max_skew_s:
            return False
        names = match["names"].split(";")
        if "host" not in names:
            return False
        headers = {name: request.headers.get(name, "") for name in names}
        expected = self._signer.authorization(
            request.method, request.path, headers, body, at=at, query=dict(request.query)
        )
        return hmac.compare_digest(expected, request.headers["Authorization"])

    # -- handlers -----------------------------------------------------------------------------

    def _campaign(self, request: aiohttp.web.Request) -> str:
        campaign = request.match_info["campaign"]
        if campaign not in self.campaigns:
            raise RefusedError("0200007", "campaign does not exist")
        return campaign

    def _server_listing(self) -> list[dict[str, str | None]]:
        listing = [dict(VENDOR_SAMPLE_SERVER)]  # first, as in the vendor's own example
        for s in self.servers.values():
            listing.append(
                {
                    "serverId": s.server_id,
                    "ip": s.ip,
                    "port": str(s.port),
                    "userName": s.user_name,
                    "filePath": s.file_path,
                }
            )
        return listing

    async def _query_server(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = request[_BODY]
        page = page_of(body)
        wanted = id_list(body, "serverIds")
        listing = [s for s in self._server_listing() if not wanted or s["serverId"] in wanted]
        return _reply(server=listing[page], count=len(listing))

    async def _upload_file_server(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        campaign = self._campaign(request)
        body = request[_BODY]
        server_id, file_name, file_path = upload_fields(body)
        if server_id not in self.servers and server_id != VENDOR_SAMPLE_SERVER["serverId"]:
            raise RefusedError("0200001", f"file server {server_id} does not exist")
        schedule = schedule_of(body)
        task = self._new_task(campaign, created_at=self.now())
        upload = UploadRecord(
            campaign_id=campaign,
            server_id=server_id,
            file_path=file_path,
            file_name=file_name,
            hour=body.get("hour"),
            minute=body.get("minute"),
            task_id=task.task_id,
            scheduled_for=self._next_occurrence(*schedule) if schedule else None,
        )
        self.uploads.append(upload)
        fault = request[_FAULT]
        self._spawn(self._run_import(upload, task, fault if isinstance(fault, Fault) else None))
        return _reply(importTaskId=task.task_id)

    async def _query_import_task(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        campaign = self._campaign(request)
        body = request[_BODY]
        page = page_of(body)
        wanted = id_list(body, "importTaskIds")
        if self.ignore_task_filter:
            wanted = None
        tasks = [
            t
            for t in reversed(self.tasks.values())
            if t.campaign_id == campaign and (not wanted or t.task_id in wanted)
        ]
        tasks.sort(key=lambda t: t.created_at, reverse=True)  # newest first, as the console
        return _reply(result=[t.as_json(self.show_time) for t in tasks[page]], count=len(tasks))

    # -- the import itself ---------------------------------------------------------------------

    async def _run_import(
        self, upload: UploadRecord, task: TaskRecord, fault: Fault | None
    ) -> None:
        if upload.scheduled_for is not None:
            await self._sleep_until(upload.scheduled_for)
            task.begun_at = upload.scheduled_for  # it began when due, however far the clock went
        else:
            await asyncio.sleep(self.import_delay_s)
            task.begun_at = self.now()
        task.status = "1"
        if fault is not None and fault.kind is FaultKind.slow_import:
            await asyncio.sleep(fault.delay_s)
        try:
            data = await self._fetch(upload)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            upload.fetch_error = f"{type(exc).__name__}: {exc}"
            task.fail("file download failed", self.now())
            log.info("emulator.import_failed", task_id=task.task_id, error=upload.fetch_error)
            return
        upload.fetched_sha256 = hashlib.sha256(data).hexdigest()
        await asyncio.sleep(self.import_delay_s)
        try:
            counts = await asyncio.to_thread(tally_rows, data, self.blacklist)
        except (CalamineError, ValueError) as exc:
            task.fail(f"file parse failed: {exc}", self.now())
            return
        if fault is not None and fault.kind is FaultKind.fail_import:
            task.fail(fault.err_msg, self.now())
            return
        task.finish(counts, self.now())
        log.info("emulator.import_finished", task_id=task.task_id, counts=counts)

    async def _fetch(self, upload: UploadRecord) -> bytes:
        server = self.servers.get(upload.server_id)
        if server is None:
            raise OSError(f"file server {upload.server_id} has no address")
        path = posixpath.join(server.file_path, upload.file_path.lstrip("/"), upload.file_name)
        async with asyncio.timeout(60):
            async with (
                asyncssh.connect(
                    server.ip, server.port, username=server.user_name, **server.connect_options
                ) as conn,
                conn.start_sftp_client() as sftp,
                sftp.open(path, "rb") as remote,
            ):
                data: bytes = await remote.read()
                return data
