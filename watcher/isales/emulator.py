"""An emulator of the three CC-iSales calls the daemon uses, for tests, ``demo`` and staging.

It checks the C2 signature and the request fields like the real server, and it imports like the
real server: some time after ``uploadFileServer`` it fetches the file over SFTP from the registered
file server and moves the task from "0" to "1" to "2" (or "3" with ``errMsg``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import itertools
import json
import posixpath
import re
import secrets
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp.web
import asyncssh
import structlog
from python_calamine import CalamineError, CalamineWorkbook

from watcher.isales.faults import Fault, FaultKind, FaultPlan
from watcher.isales.signer import Signer

__all__ = ("Call", "Emulator", "RegisteredServer", "TaskRecord", "UploadRecord")

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


def _endpoint(path: str) -> str:
    return next((name for part, name in _ENDPOINTS.items() if f"/{part}" in path), "*")


_PREFIX = "/rest/isales/v1/openapi/campaigns/{vdn}"


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
    """An import task the emulator runs."""

    task_id: str
    campaign_id: str
    status: str = "0"
    succ_num: int | None = None
    fail_num: int | None = None
    repeat_num: int | None = None
    err_msg: str = ""
    begin_time: str | None = None
    end_time: str | None = None

    def as_json(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"id": self.task_id, "status": self.status, "errMsg": self.err_msg}
        for key, value in (
            ("succNum", self.succ_num),
            ("failNum", self.fail_num),
            ("repeatNum", self.repeat_num),
            ("beginTime", self.begin_time),
            ("endTime", self.end_time),
        ):
            if value is not None:
                reply[key] = value
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
    fetched_sha256: str | None = None
    fetch_error: str | None = None


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")  # 2022-03-11T07:27:09.000+00:00


def _reply(code: str = "0200000", desc: str = "success", **extra: Any) -> aiohttp.web.Response:
    body = {"resultCode": code, "resultDesc": desc, "returnCode": code, "returnDesc": desc, **extra}
    return aiohttp.web.json_response(body)


def _count_rows(data: bytes) -> tuple[int, int]:
    """(rows with a ``called`` value, rows without) after the header, like an importer would."""
    workbook = CalamineWorkbook.from_filelike(io.BytesIO(data))
    rows = workbook.get_sheet_by_index(0).iter_rows()
    called_col: int | None = None
    good = bad = 0
    for row in rows:
        cells = [str(c).strip() if c is not None else "" for c in row]
        if called_col is None:
            for index, cell in enumerate(cells):
                if re.match(r"(?i)^called\b", cell):
                    called_col = index
            continue
        if not any(cells):
            continue
        if called_col < len(cells) and cells[called_col]:
            good += 1
        else:
            bad += 1
    if called_col is None:
        raise ValueError("no header row with a called column")
    return good, bad


class Emulator:
    """The emulated server. Use :meth:`start` and :meth:`close`, or mount :attr:`app` yourself.

    Args:
        access_key: the AK it accepts.
        secret_key: the SK it verifies signatures with.
        vdn_id: the VDN in the paths.
        servers: the registered file servers.
        campaigns: the campaign ids that exist; ``None`` accepts any.
        import_delay_s: how long a task stays "0" and then "1".
        max_skew_s: the signature timestamp tolerance.
    """

    def __init__(
        self,
        *,
        access_key: str,
        secret_key: str,
        vdn_id: int,
        servers: list[RegisteredServer],
        campaigns: set[str] | None = None,
        import_delay_s: float = 0.3,
        max_skew_s: float = 300.0,
    ) -> None:
        self._signer = Signer(access_key, secret_key)
        self.vdn_id = vdn_id
        self.servers = {server.server_id: server for server in servers}
        self.campaigns = campaigns
        self.import_delay_s = import_delay_s
        self.max_skew_s = max_skew_s
        self.uploads: list[UploadRecord] = []
        self.tasks: dict[str, TaskRecord] = {}
        self.calls: list[Call] = []  # every request, in order
        self._ids = itertools.count(int.from_bytes(secrets.token_bytes(4), "big"))
        self._jobs: set[asyncio.Task[None]] = set()
        self._runner: aiohttp.web.AppRunner | None = None
        self.base_url = ""
        prefix = _PREFIX.format(vdn=vdn_id)
        self.faults = FaultPlan()
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

    # -- signature ---------------------------------------------------------------------------

    @aiohttp.web.middleware
    async def _authenticate(
        self, request: aiohttp.web.Request, handler: Any
    ) -> aiohttp.web.StreamResponse:
        body = await request.text()
        if not self._is_signed(request, body):
            self.calls.append(Call(request.path, 401))
            return aiohttp.web.json_response({"error": "unauthorized"}, status=401)
        try:
            request[_BODY] = json.loads(body)
        except ValueError:
            self.calls.append(Call(request.path, 200))
            return _reply("0200001", "the body is not JSON")
        fault = self.faults.next_fault(_endpoint(request.path))
        request[_FAULT] = fault
        response = await self._misbehave(request, handler, fault)
        self.calls.append(Call(request.path, response.status, fault))
        return response

    async def _misbehave(
        self, request: aiohttp.web.Request, handler: Any, fault: Fault | None
    ) -> aiohttp.web.StreamResponse:
        if fault is not None:
            log.info(
                "emulator.fault", path=request.path, fault=fault.kind.value, status=fault.status
            )
        if fault is not None and fault.kind is FaultKind.status:
            headers = {}
            if fault.retry_after_s is not None:
                headers["Retry-After"] = f"{fault.retry_after_s:g}"
            return aiohttp.web.json_response(
                {"error": f"HTTP {fault.status}"}, status=fault.status, headers=headers
            )
        if fault is not None and fault.kind is FaultKind.delay:
            await asyncio.sleep(fault.delay_s)
        response: aiohttp.web.StreamResponse = await handler(request)
        if fault is None:
            return response
        if fault.kind is FaultKind.drop_after_accept:
            assert request.transport is not None
            request.transport.abort()  # the work is done; the answer never leaves
            return response
        if fault.kind is FaultKind.broken_body:
            return aiohttp.web.Response(
                status=200, text='{"resultCode": "0200', content_type="application/json"
            )
        if fault.kind is FaultKind.accept_then_502:
            return aiohttp.web.Response(
                status=502, text="<html>502 Bad Gateway</html>", content_type="text/html"
            )
        if fault.kind is FaultKind.skew:
            at = datetime.now(UTC) + timedelta(seconds=fault.skew_s)
            response.headers["Date"] = format_datetime(at, usegmt=True)
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

    @staticmethod
    def _page(body: dict[str, Any]) -> tuple[int, int] | None:
        offset, limit = body.get("offset"), body.get("limit")
        if not isinstance(offset, int) or not isinstance(limit, int) or offset < 0:
            return None
        if not 1 <= limit <= 100:
            return None
        return offset, limit

    async def _query_server(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = request[_BODY]
        page = self._page(body)
        if page is None:
            return _reply("02000007", "offset/limit out of range")
        wanted = body.get("serverIds")
        servers = [s for s in self.servers.values() if not wanted or s.server_id in wanted]
        offset, limit = page
        listing = [
            {
                "serverId": s.server_id,
                "ip": s.ip,
                "port": str(s.port),
                "userName": s.user_name,
                "filePath": s.file_path,
            }
            for s in servers[offset : offset + limit]
        ]
        return _reply(server=listing, count=len(servers))

    async def _upload_file_server(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        campaign = request.match_info["campaign"]
        body = request[_BODY]
        if self.campaigns is not None and campaign not in self.campaigns:
            return _reply("0200007", "campaign does not exist")
        server_id, file_name = body.get("serverId"), body.get("fileName")
        if not server_id or not file_name:
            return _reply("02000001", "serverId and fileName are required")
        if server_id not in self.servers:
            return _reply("0200001", f"file server {server_id} does not exist")
        hour, minute = body.get("hour"), body.get("minute")
        if (hour is None) != (minute is None):
            return _reply("02000010", "hour and minute must be set together")
        extra = set(body) - {"serverId", "filePath", "fileName", "hour", "minute"}
        if extra:
            return _reply("02000011", f"unexpected parameters {sorted(extra)}")
        task = TaskRecord(task_id=f"{next(self._ids):030d}", campaign_id=campaign)
        self.tasks[task.task_id] = task
        upload = UploadRecord(
            campaign_id=campaign,
            server_id=server_id,
            file_path=body.get("filePath") or "",
            file_name=file_name,
            hour=hour,
            minute=minute,
            task_id=task.task_id,
        )
        self.uploads.append(upload)
        fault = request[_FAULT]
        job = asyncio.create_task(
            self._run_import(upload, task, fault if isinstance(fault, Fault) else None)
        )
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return _reply(importTaskId=task.task_id)

    async def _query_import_task(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        campaign = request.match_info["campaign"]
        body = request[_BODY]
        if self.campaigns is not None and campaign not in self.campaigns:
            return _reply("0200007", "campaign does not exist")
        page = self._page(body)
        if page is None:
            return _reply("02000007", "offset/limit out of range")
        wanted = body.get("importTaskIds")
        tasks = [
            t
            for t in self.tasks.values()
            if t.campaign_id == campaign and (not wanted or t.task_id in wanted)
        ]
        offset, limit = page
        return _reply(
            result=[t.as_json() for t in tasks[offset : offset + limit]], count=len(tasks)
        )

    # -- the import itself ---------------------------------------------------------------------

    async def _run_import(
        self, upload: UploadRecord, task: TaskRecord, fault: Fault | None
    ) -> None:
        await asyncio.sleep(self.import_delay_s)
        task.status, task.begin_time = "1", _timestamp()
        if fault is not None and fault.kind is FaultKind.slow_import:
            await asyncio.sleep(fault.delay_s)
        try:
            data = await self._fetch(upload)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            upload.fetch_error = f"{type(exc).__name__}: {exc}"
            task.status, task.err_msg, task.end_time = "3", "file download failed", _timestamp()
            log.info("emulator.import_failed", task_id=task.task_id, error=upload.fetch_error)
            return
        upload.fetched_sha256 = hashlib.sha256(data).hexdigest()
        await asyncio.sleep(self.import_delay_s)
        try:
            good, bad = await asyncio.to_thread(_count_rows, data)
        except (CalamineError, ValueError) as exc:
            task.status, task.err_msg, task.end_time = (
                "3",
                f"file parse failed: {exc}",
                _timestamp(),
            )
            return
        if fault is not None and fault.kind is FaultKind.fail_import:
            task.status, task.err_msg, task.end_time = "3", fault.err_msg, _timestamp()
            return
        task.succ_num, task.fail_num, task.repeat_num = good, bad, 0
        task.status, task.end_time = "2", _timestamp()
        log.info("emulator.import_finished", task_id=task.task_id, succ_num=good, fail_num=bad)

    async def _fetch(self, upload: UploadRecord) -> bytes:
        server = self.servers[upload.server_id]
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
