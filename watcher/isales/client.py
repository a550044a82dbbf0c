"""The CC-iSales OpenAPI client. aiohttp errors are mapped to the watcher error tree here."""

from __future__ import annotations

import asyncio
import json
import posixpath
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self

import aiohttp
import stamina
import structlog

from watcher.errors import (
    ApiAmbiguousError,
    ApiRejectedError,
    ApiTrustError,
    ApiUnavailableError,
    ConfigError,
    SignatureRefusedError,
)
from watcher.isales.signer import Signer, format_timestamp
from watcher.models import ImportTask
from watcher.settings import IsalesSettings, Settings

__all__ = ("RESULT_MESSAGES", "FileServer", "IsalesClient", "choose_server", "describe_code")

log = structlog.get_logger(__name__)

SUCCESS = "0200000"
_MAX_SKEW_S = 60.0
TOO_FREQUENT = "0200022"

RESULT_MESSAGES = {
    "0200001": "iSales refused a parameter",
    "0200006": "iSales had a database error",
    "0200007": "the campaign does not exist: check campaign_id of the route",
    "0200022": "iSales says it is called too frequently",
    "0200033": "the outbound call data does not exist",
    "0200034": "the sub-status does not match the business result",
    "02000001": "a required parameter is empty",
    "02000002": "a parameter contains invalid characters",
    "02000003": "a parameter is too long",
    "02000004": "a parameter is too short",
    "02000005": "a parameter's length is out of range",
    "02000006": "a parameter has the wrong type",
    "02000007": "a parameter has a wrong value",
    "02000008": "a parameter could not be converted",
    "02000009": "the combination of parameters is invalid",
    "02000010": "hour and minute must be given together",
    "02000011": "too many parameters",
}


def describe_code(code: str, desc: str | None) -> str:
    """A plain message for a result code, with the server's own words when it gave any."""
    known = RESULT_MESSAGES.get(code, "iSales refused the request")
    return f"{known}: {desc}" if desc and desc not in known else known


@dataclass(frozen=True, slots=True)
class FileServer:
    """A file server registered in iSales."""

    server_id: str
    ip: str | None
    port: str | None
    user_name: str | None
    file_path: str | None


def choose_server(servers: list[FileServer], settings: Settings) -> FileServer:
    """The registered file server the daemon watches: configured, or matched by host, port, user.

    Raises:
        ConfigError: none or several match; the message lists what is registered.
    """
    configured = settings.isales.server_id
    sftp = settings.sftp
    if configured:
        matches = [s for s in servers if s.server_id == configured]
        if not matches:
            raise ConfigError(
                f"isales.server_id: {configured} is not a file server of VDN "
                f"{settings.isales.vdn_id} (see: isales-watcher servers)"
            )
        return matches[0]
    matches = [
        s
        for s in servers
        if s.ip == sftp.host and str(s.port) == str(sftp.port) and s.user_name == sftp.username
    ]
    if len(matches) != 1:
        found = ", ".join(f"{s.server_id}={s.user_name}@{s.ip}:{s.port}" for s in servers)
        raise ConfigError(
            f"isales.server_id: {len(matches)} file servers registered in iSales match "
            f"{sftp.username}@{sftp.host}:{sftp.port} (registered: {found or 'none'}); "
            "set isales.server_id"
        )
    chosen = matches[0]
    if chosen.file_path and posixpath.normpath(chosen.file_path) != posixpath.normpath(
        sftp.base_path
    ):
        log.warning(
            "isales.base_path_differs", registered=chosen.file_path, configured=sftp.base_path
        )
    return chosen


def _call_name(path: str) -> str:
    """``uploadFileServer`` for ``…/calldatafile/uploadFileServer/{campaignId}``."""
    parts = path.split("/")
    return parts[-2] if "calldatafile" in parts else parts[-1]


def _retry_hook(exc: Exception) -> bool | float:
    if isinstance(exc, ApiUnavailableError):
        return exc.retry_after_s if exc.retry_after_s is not None else True
    return False


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _task(item: Mapping[str, Any]) -> ImportTask:
    return ImportTask(
        task_id=str(item.get("id")),
        status=str(item.get("status")),
        succ_num=_int(item.get("succNum")),
        repeat_num=_int(item.get("repeatNum")),
        fail_num=_int(item.get("failNum")),
        black_num=_int(item.get("blackNum")),
        err_msg=str(item.get("errMsg") or ""),
        begin_time=item.get("beginTime"),
        end_time=item.get("endTime"),
    )


class IsalesClient:
    """Signed calls to one CC-iSales tenant (VDN).

    Reads (queryServer, queryDataImportTask) are retried on any transient failure. The import call
    is retried only when the request provably had no effect; anything else surfaces as
    :class:`ApiAmbiguousError` so that the caller can reconcile instead of re-sending.
    """

    def __init__(
        self,
        settings: IsalesSettings,
        on_call: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_call = on_call  # (call name, seconds, succeeded): for metrics and readiness
        self._signer = Signer(
            settings.access_key.get_secret_value(), settings.secret_key.get_secret_value()
        )
        self._session: aiohttp.ClientSession | None = None
        self._prefix = f"/rest/isales/v1/openapi/campaigns/{settings.vdn_id}"
        self._reported_skew_s = 0.0

    async def __aenter__(self) -> Self:
        context: ssl.SSLContext | aiohttp.Fingerprint | bool = True
        if self._settings.certificate_pin is not None:
            # A pin trusts exactly one certificate, checked before any request is sent.
            context = aiohttp.Fingerprint(self._settings.certificate_pin)
        elif self._settings.ca_file is not None:
            context = ssl.create_default_context(cafile=str(self._settings.ca_file))
        self._session = aiohttp.ClientSession(
            base_url=self._settings.base_url.rstrip("/"),
            connector=aiohttp.TCPConnector(ssl=context, limit=8),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def query_servers(self) -> list[FileServer]:
        """Every file server registered for the VDN (paged)."""
        servers: list[FileServer] = []
        while True:
            body = {"offset": len(servers), "limit": 100}
            reply = await self._read(f"{self._prefix}/file/queryServer", body)
            page = reply.get("server") or []
            servers.extend(
                FileServer(
                    server_id=str(item.get("serverId")),
                    ip=item.get("ip"),
                    port=None if item.get("port") is None else str(item.get("port")),
                    user_name=item.get("userName"),
                    file_path=item.get("filePath"),
                )
                for item in page
            )
            if not page or len(servers) >= int(reply.get("count") or 0):
                return servers

    async def query_tasks(
        self, campaign_id: str, task_ids: list[str] | None = None, *, offset: int = 0
    ) -> tuple[list[ImportTask], int]:
        """One page (100) of import tasks of a campaign, and the total count."""
        body: dict[str, Any] = {"offset": offset, "limit": 100}
        if task_ids:
            body["importTaskIds"] = task_ids
        path = f"{self._prefix}/calldatafile/queryDataImportTask/{campaign_id}"
        reply = await self._read(path, body)
        tasks = [_task(item) for item in reply.get("result") or []]
        return tasks, int(reply.get("count") or len(tasks))

    async def upload(
        self,
        campaign_id: str,
        *,
        server_id: str,
        file_path: str,
        file_name: str,
        hour_minute: tuple[str, str] | None,
    ) -> str:
        """Ask iSales to import a file from the file server; returns the import task id.

        Raises:
            ApiUnavailableError: provably not acted on, after the bounded retries.
            ApiAmbiguousError: the outcome is unknown; never send it again blindly.
            ApiRejectedError: iSales refused it.
            SignatureRefusedError: HTTP 401.
        """
        body: dict[str, Any] = {"serverId": server_id, "fileName": file_name}
        if file_path:
            body["filePath"] = file_path
        if hour_minute is not None:
            body["hour"], body["minute"] = hour_minute
        path = f"{self._prefix}/calldatafile/uploadFileServer/{campaign_id}"
        async for attempt in stamina.retry_context(
            on=_retry_hook, attempts=5, timeout=120, wait_initial=1.0, wait_max=30.0
        ):
            with attempt:
                reply = await self._call(path, body)
        task_id = reply.get("importTaskId")
        if not task_id:
            raise ApiAmbiguousError("iSales accepted the import but returned no importTaskId")
        return str(task_id)

    async def _read(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A call without side effects: every transient failure may be retried."""

        def hook(exc: Exception) -> bool | float:
            return True if isinstance(exc, ApiAmbiguousError) else _retry_hook(exc)

        async for attempt in stamina.retry_context(
            on=hook, attempts=5, timeout=120, wait_initial=1.0, wait_max=30.0
        ):
            with attempt:
                return await self._call(path, body)
        raise AssertionError("unreachable")

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        ok = False
        try:
            reply = await self._send(path, body)
            ok = True
            return reply
        finally:
            if self._on_call is not None:
                self._on_call(_call_name(path), time.monotonic() - started, ok)

    async def _send(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None, "use the client as an async context manager"
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        at = datetime.now(UTC)
        headers = {
            "Host": self._settings.host_header,
            "Content-Type": "application/json; charset=UTF-8",
        }
        signed = {
            name: value
            for name, value in headers.items()
            if name.lower() in self._settings.signed_headers
        }
        headers["Authorization"] = self._signer.authorization("POST", path, signed, text, at=at)
        try:
            async with asyncio.timeout(self._settings.request_timeout_s):
                async with self._session.post(path, data=text.encode(), headers=headers) as resp:
                    raw = await resp.read()
                    status, reply_headers = resp.status, resp.headers
        except aiohttp.ServerFingerprintMismatch as exc:
            raise ApiTrustError(
                f"the TLS certificate of {self._settings.base_url} is not the pinned one "
                f"(got sha256 {exc.got.hex()}); check isales.tls_fingerprint"
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ApiTrustError(
                f"cannot verify the TLS certificate of {self._settings.base_url}: "
                f"{exc.certificate_error}; set isales.ca_file to the CA that signed it"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            # Raised before a single byte of the request went out: DNS, refused, TLS handshake.
            raise ApiUnavailableError(f"cannot connect to iSales: {exc}") from None
        except TimeoutError:
            raise ApiAmbiguousError(
                f"iSales did not answer within {self._settings.request_timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise ApiAmbiguousError(f"the connection to iSales broke: {exc!r}") from None
        self._check_clock(reply_headers.get("Date"))
        return self._interpret(path, status, reply_headers, raw, at)

    def _check_clock(self, date_header: str | None) -> None:
        """Warn when the server's clock and ours disagree: signatures carry our time."""
        if not date_header:
            return
        try:
            skew_s = (parsedate_to_datetime(date_header) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return
        if abs(skew_s) > _MAX_SKEW_S and abs(skew_s - self._reported_skew_s) > _MAX_SKEW_S / 2:
            log.warning(
                "isales.clock_skew",
                skew_s=round(skew_s),
                server_date=date_header,
                advice="synchronise this host's clock (NTP); iSales may refuse signatures",
            )
            self._reported_skew_s = skew_s

    def _interpret(
        self, path: str, status: int, headers: Mapping[str, str], raw: bytes, at: datetime
    ) -> dict[str, Any]:
        if status == 401:
            raise SignatureRefusedError(
                "signature refused (HTTP 401): check access_key/secret_key and the clock; "
                f"signed at {format_timestamp(at)} for Host {self._settings.host_header}"
            )
        if status in (429, 503):
            raise ApiUnavailableError(
                f"iSales is busy (HTTP {status})",
                retry_after_s=_retry_after(headers.get("Retry-After")),
            )
        if status >= 500:
            raise ApiAmbiguousError(f"iSales answered HTTP {status}")
        if status != 200:
            raise ApiRejectedError(f"http-{status}", f"iSales answered HTTP {status} for {path}")
        try:
            reply = json.loads(raw)
            code = str(reply.get("resultCode", reply.get("returnCode")))
        except (ValueError, AttributeError):
            raise ApiAmbiguousError("iSales answered with a body that is not JSON") from None
        if code == SUCCESS:
            return dict(reply)
        desc = reply.get("resultDesc") or reply.get("returnDesc")
        if code == TOO_FREQUENT:
            raise ApiUnavailableError(describe_code(code, desc))
        raise ApiRejectedError(code, describe_code(code, desc))
