"""The CC-iSales OpenAPI client. aiohttp errors are mapped to the watcher error tree here."""

from __future__ import annotations

import asyncio
import json
import math
import posixpath
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timezone
from email.utils import parsedate_to_datetime
from types import SimpleNamespace, TracebackType
from typing import Any, Self

import aiohttp
import stamina
import structlog

from watcher.errors import (
    ApiAmbiguousError,
    ApiRejectedError,
    ApiReplyError,
    ApiTrustError,
    ApiUnavailableError,
    ConfigError,
    SignatureRefusedError,
)
from watcher.isales.replies import (
    FileServer,
    TaskPage,
    count_of,
    describe_code,
    items,
    read_server,
    read_task,
    shown,
)
from watcher.isales.signer import Signer, format_timestamp
from watcher.models import ImportTask
from watcher.settings import IsalesSettings, Settings

__all__ = ("IsalesClient", "choose_server")

log = structlog.get_logger(__name__)

SUCCESS = "0200000"
_MAX_SKEW_S = 60.0
_TRUSTED_SKEW_S = 300.0
TOO_FREQUENT = "0200022"
_MAX_REPLY_BYTES = 8 << 20
_MAX_PAGES = 50
_GATEWAY = (502, 503, 504)
_SIGNATURE = re.compile(r"(?i)auth-v2(?:/|%2F)[^\s\"',;]*|\b[0-9a-f]{64}\b")


def choose_server(servers: list[FileServer], settings: Settings) -> FileServer:
    """The registered file server the daemon watches: configured, or matched by host, port, user.

    Its default path must be ``sftp.base_path``: ``filePath`` is sent relative to it.

    Raises:
        ConfigError: none or several match, or the paths differ; the message says what is there.
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
    else:
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
    if chosen.file_path is None:
        log.warning(
            "isales.default_path_unknown",
            server_id=chosen.server_id,
            configured=sftp.base_path,
            advice="iSales reports no default path for this server; filePath is sent relative "
            "to sftp.base_path",
        )
    elif posixpath.normpath(chosen.file_path) != posixpath.normpath(sftp.base_path):
        raise ConfigError(
            f"sftp.base_path: {sftp.base_path} is not the default path that iSales has for file "
            f"server {chosen.server_id} ({shown(chosen.file_path)}); iSales would look for the "
            "files in the wrong folder. Set sftp.base_path to the registered default path"
        )
    return chosen


def _call_name(path: str) -> str:
    """``uploadFileServer`` for ``…/calldatafile/uploadFileServer/{campaignId}``."""
    parts = path.split("/")
    return parts[-2] if "calldatafile" in parts else parts[-1]


_MIN_WAIT_S = 0.5  # a Retry-After of 0 (or in the past) still spaces the attempts


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` (seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return None
    if math.isnan(seconds) or seconds < 0:
        return None
    return max(_MIN_WAIT_S, seconds)


@dataclass(slots=True)
class _Progress:
    """Whether any part of a request may have left this process (set by an aiohttp trace)."""

    headers_sent: bool = False


async def _on_headers_sent(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    progress = context.trace_request_ctx
    if isinstance(progress, _Progress):
        progress.headers_sent = True


class IsalesClient:
    """Signed calls to one CC-iSales tenant (VDN).

    Reads (queryServer, queryDataImportTask) are retried on any transient failure. The import call
    is sent once: a failure that provably happened before the request left is
    :class:`ApiUnavailableError` (the caller may send it again); anything later is
    :class:`ApiAmbiguousError`, so that the caller reconciles instead of re-sending. Redirects
    are never followed, and every error text is built here, never from a library's ``repr``.

    Args:
        settings: the ``[isales]`` section.
        on_call: called with (call name, seconds, succeeded), for metrics and readiness.
        max_wait_s: the longest a ``Retry-After`` is honoured.
    """

    def __init__(
        self,
        settings: IsalesSettings,
        on_call: Callable[[str, float, bool], None] | None = None,
        *,
        max_wait_s: float = 300.0,
    ) -> None:
        self._settings = settings
        self._on_call = on_call
        self._max_wait_s = max_wait_s
        self._signer = Signer(
            settings.access_key.get_secret_value(), settings.secret_key.get_secret_value()
        )
        self._session: aiohttp.ClientSession | None = None
        self._prefix = f"/rest/isales/v1/openapi/campaigns/{settings.vdn_id}"
        self._reported_skew_s = 0.0
        self.clock_skew_s = 0.0  # the server's clock minus ours, from its latest Date header
        self.date_zone: timezone | None = None  # the zone of the Date header, if not GMT

    @property
    def server_zone(self) -> timezone | None:
        """The zone of the server's zone-less times: configured, else its Date header's."""
        return self._settings.server_zone or self.date_zone

    async def __aenter__(self) -> Self:
        context: ssl.SSLContext | aiohttp.Fingerprint | bool = True
        if self._settings.certificate_pin is not None:
            # A pin trusts exactly one certificate, checked before any request is sent.
            context = aiohttp.Fingerprint(self._settings.certificate_pin)
        elif self._settings.ca_file is not None:
            context = ssl.create_default_context(cafile=str(self._settings.ca_file))
        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(_on_headers_sent)
        self._session = aiohttp.ClientSession(
            base_url=self._settings.base_url.rstrip("/"),
            connector=aiohttp.TCPConnector(ssl=context, limit=8),
            timeout=aiohttp.ClientTimeout(total=None),
            trace_configs=[tracing],
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def query_servers(
        self, server_ids: list[str] | None = None, *, retry: bool = True
    ) -> list[FileServer]:
        """Every file server registered for the VDN (paged), or those named."""
        servers: dict[str, FileServer] = {}
        offset = 0
        for _ in range(_MAX_PAGES):
            body: dict[str, Any] = {"offset": offset, "limit": 100}
            if server_ids:
                body["serverIds"] = server_ids
            reply = await self._read(f"{self._prefix}/file/queryServer", body, retry=retry)
            page = items(reply, "server", "queryServer")
            known = len(servers)
            for index, item in enumerate(page):
                server = read_server(item, offset + index)
                if server is not None:
                    servers.setdefault(server.server_id, server)
            offset += len(page)
            repeated = page and len(servers) == known  # a server that ignores offset
            if not page or repeated or offset >= count_of(reply, "queryServer", offset):
                break
        return list(servers.values())

    async def query_tasks(
        self, campaign_id: str, task_ids: list[str] | None = None, *, offset: int = 0
    ) -> TaskPage:
        """One page (100) of import tasks of a campaign, and the total count.

        ``task_ids`` is passed as the ``importTaskIds`` filter, which a server may ignore.
        """
        body: dict[str, Any] = {"offset": offset, "limit": 100}
        if task_ids:
            body["importTaskIds"] = task_ids
        path = f"{self._prefix}/calldatafile/queryDataImportTask/{campaign_id}"
        reply = await self._read(path, body)
        listed = items(reply, "result", "queryDataImportTask")
        tasks = [read_task(item, offset + index) for index, item in enumerate(listed)]
        tasks = [
            replace(t, err_msg=self._redact(t.err_msg, 500)) if t.err_msg else t for t in tasks
        ]
        return TaskPage(tasks, count_of(reply, "queryDataImportTask", offset + len(tasks)))

    async def find_tasks(self, campaign_id: str, task_ids: list[str]) -> dict[str, ImportTask]:
        """The named tasks of a campaign, as many as are listed.

        Asked with the ``importTaskIds`` filter first; a server that ignores it (the filter is
        only in the vendor's sample) is read page by page from both ends of its listing, so
        that recent tasks are found early whichever way it sorts.
        """
        wanted = set(task_ids)
        found: dict[str, ImportTask] = {}
        for start in range(0, len(task_ids), 100):
            page = await self.query_tasks(campaign_id, task_ids[start : start + 100])
            found.update((t.task_id, t) for t in page.tasks if t.task_id in wanted)
        if len(found) == len(wanted):
            return found
        first = await self.query_tasks(campaign_id, offset=0)
        found.update((t.task_id, t) for t in first.tasks if t.task_id in wanted)
        if first.total > len(first.tasks):  # a count to trust: read from both ends
            ends = list(range(100, first.total, 100))
            order = [o for pair in zip(reversed(ends), ends, strict=True) for o in pair]
        else:  # no usable count: read on while pages are full
            order = list(range(100, 100 * _MAX_PAGES, 100)) if len(first.tasks) == 100 else []
        seen = {t.task_id for t in first.tasks}
        for offset in list(dict.fromkeys(order))[: _MAX_PAGES - 1]:
            if len(found) == len(wanted):
                break
            page = await self.query_tasks(campaign_id, offset=offset)
            found.update((t.task_id, t) for t in page.tasks if t.task_id in wanted)
            fresh = {t.task_id for t in page.tasks} - seen
            if not fresh:
                break  # an empty page, or the same page again: a server that ignores offset
            seen |= fresh
        return found

    async def upload(
        self,
        campaign_id: str,
        *,
        server_id: str,
        file_path: str,
        file_name: str,
        hour_minute: tuple[str, str] | None,
    ) -> str:
        """Ask iSales to import a file from the file server, once; returns the import task id.

        Raises:
            ApiUnavailableError: provably not acted on (the caller may send it again later).
            ApiAmbiguousError: the outcome is unknown; never send it again blindly.
            ApiRejectedError: iSales refused it.
            SignatureRefusedError: HTTP 401.
            ApiTrustError: the certificate cannot be verified; nothing was sent.
        """
        body: dict[str, Any] = {"serverId": server_id, "fileName": file_name}
        if file_path:
            body["filePath"] = file_path
        if hour_minute is not None:
            body["hour"], body["minute"] = hour_minute
        path = f"{self._prefix}/calldatafile/uploadFileServer/{campaign_id}"
        reply = await self._call(path, body)
        task_id = reply.get("importTaskId")
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            task_id = str(task_id)
        if not isinstance(task_id, str) or not task_id.strip():
            raise ApiReplyError(
                "uploadFileServer: iSales answered success without a usable importTaskId "
                f"({type(task_id).__name__})"
            )
        return task_id.strip()

    async def _read(self, path: str, body: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        """A call without side effects: every transient or ambiguous failure may be retried."""
        if not retry:
            return await self._call(path, body)

        def hook(exc: Exception) -> bool | float:
            if isinstance(exc, ApiUnavailableError | ApiAmbiguousError):
                wait_s = exc.retry_after_s
                return True if wait_s is None else min(wait_s, self._max_wait_s)
            return False  # refused, or a signature or trust problem: retrying will not help

        async for attempt in stamina.retry_context(
            on=hook, attempts=5, timeout=None, wait_initial=1.0, wait_max=30.0
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

    def _headers(self, path: str, text: str, at: datetime) -> dict[str, str]:
        headers = {
            "Host": self._settings.sent_host,
            "Content-Type": "application/json; charset=UTF-8",
        }
        if self._settings.locale:
            headers["locale"] = self._settings.locale
        signed = {
            name: value
            for name, value in headers.items()
            if name.lower() in self._settings.signed_headers
        }
        headers["Authorization"] = self._signer.authorization("POST", path, signed, text, at=at)
        return headers

    async def _send(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None, "use the client as an async context manager"
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        at = datetime.now(UTC)
        call = _call_name(path)
        progress = _Progress()
        try:
            async with asyncio.timeout(self._settings.request_timeout_s):
                async with self._session.post(
                    path,
                    data=text.encode(),
                    headers=self._headers(path, text, at),
                    allow_redirects=False,
                    trace_request_ctx=progress,
                ) as resp:
                    raw = await self._body(resp, call)
                    status, reply_headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failure(exc, call, sent=progress.headers_sent) from None
        self._check_clock(reply_headers.get("Date"))
        return self._interpret(call, status, reply_headers, raw, at)

    @staticmethod
    async def _body(resp: aiohttp.ClientResponse, call: str) -> bytes:
        """The whole body, however it arrives, up to a bound."""
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > _MAX_REPLY_BYTES:
                raise ApiReplyError(f"{call}: the reply is larger than {_MAX_REPLY_BYTES >> 20} MB")
            parts.append(chunk)
        return b"".join(parts)

    def _failure(self, exc: BaseException, call: str, *, sent: bool) -> Exception:
        """Our own words for a transport failure: whether the request may have left, and why."""
        where = f"iSales at {self._settings.sent_host}"
        if isinstance(exc, aiohttp.ServerFingerprintMismatch):
            return ApiTrustError(
                f"the TLS certificate of {where} is not the pinned one "
                f"(got sha256 {exc.got.hex()}); check isales.tls_fingerprint"
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            why = getattr(exc.certificate_error, "verify_message", None) or "untrusted"
            return ApiTrustError(
                f"cannot verify the TLS certificate of {where}: {shown(why, 200)}; "
                "set isales.ca_file to the CA that signed it"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            return ApiUnavailableError(f"{call}: cannot connect to {where}: {shown(reason)}")
        timeout_s = self._settings.request_timeout_s
        if not sent:
            what = "no connection within" if isinstance(exc, TimeoutError) else "connection failed"
            return ApiUnavailableError(
                f"{call}: {what} {timeout_s:g} s to {where}; nothing was sent"
                if isinstance(exc, TimeoutError)
                else f"{call}: {what} before the request was sent ({type(exc).__name__})"
            )
        if isinstance(exc, TimeoutError):
            return ApiAmbiguousError(f"{call}: {where} did not answer within {timeout_s:g} s")
        return ApiAmbiguousError(
            f"{call}: the connection to {where} broke after the request was sent "
            f"({type(exc).__name__})"
        )

    def _redact(self, text: str, limit: int = 300) -> str:
        """Peer text may echo our request: never let it carry the key or a signature on.

        Redacted whole, then cut to ``limit`` characters and made printable.
        """
        text = _SIGNATURE.sub("[signature removed]", text)
        for secret in (self._signer.access_key, self._settings.secret_key.get_secret_value()):
            if secret:
                text = re.sub(re.escape(secret), "[removed]", text, flags=re.IGNORECASE)
        return shown(text, limit)

    def _check_clock(self, date_header: str | None) -> None:
        """Note the server's clock and zone; warn when its clock and ours disagree."""
        if not date_header:
            return
        try:
            server_now = parsedate_to_datetime(date_header)
            skew_s = (server_now - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return
        offset = server_now.utcoffset()
        if offset:  # a Date in the server's own zone ("+0800") tells the zone
            self.date_zone = timezone(offset)
        # Beyond the signature's tolerance iSales would refuse us: such a Date is not its clock
        # (a proxy stamps its own), so server times are then taken as they are.
        self.clock_skew_s = skew_s if abs(skew_s) <= _TRUSTED_SKEW_S else 0.0
        if abs(skew_s) > _MAX_SKEW_S and abs(skew_s - self._reported_skew_s) > _MAX_SKEW_S / 2:
            log.warning(
                "isales.clock_skew",
                skew_s=round(skew_s),
                server_date=shown(date_header),
                advice="synchronise this host's clock (NTP); iSales may refuse signatures",
            )
            self._reported_skew_s = skew_s

    def _interpret(
        self, call: str, status: int, headers: Mapping[str, str], raw: bytes, at: datetime
    ) -> dict[str, Any]:
        if 300 <= status < 400:
            location = shown(headers.get("Location") or "nowhere", 200)
            raise ApiUnavailableError(
                f"{call}: iSales answered HTTP {status} redirecting to {location}; redirects are "
                "not followed: set isales.base_url to the address that answers"
            )
        if status == 401:
            raise SignatureRefusedError(
                f"signature refused (HTTP 401): check access_key/secret_key and the clock; "
                f"signed at {format_timestamp(at)} for Host {self._settings.sent_host}"
            )
        retry_after_s = _retry_after(headers.get("Retry-After"))
        if status == 429:
            raise ApiUnavailableError(
                f"{call}: iSales is busy (HTTP 429)", retry_after_s=retry_after_s
            )
        if status >= 500:
            # A gateway may have forwarded the request before failing: never provably unsent.
            kind = "a gateway error" if status in _GATEWAY else "a server error"
            raise ApiAmbiguousError(
                f"{call}: iSales answered HTTP {status} ({kind})", retry_after_s=retry_after_s
            )
        ok = 200 <= status < 300
        reply = self._json(call, ok, raw)
        if not ok:
            return self._refused(call, status, reply)
        if reply is None:
            raise ApiReplyError(
                f"{call}: iSales answered HTTP {status} with a body that is not JSON"
            )
        return self._outcome(call, reply)

    @staticmethod
    def _json(call: str, ok: bool, raw: bytes) -> dict[str, Any] | None:
        try:
            reply = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested beyond any real reply
            return None
        if not isinstance(reply, dict):
            if ok:
                raise ApiReplyError(
                    f"{call}: the reply is a JSON {type(reply).__name__}, expected an object"
                )
            return None
        return reply

    def _outcome(self, call: str, reply: dict[str, Any]) -> dict[str, Any]:
        code = reply.get("resultCode", reply.get("returnCode"))
        if not isinstance(code, str | int) or isinstance(code, bool):
            raise ApiReplyError(f"{call}: the reply has no resultCode")
        code = str(code)
        if code == SUCCESS:
            return reply
        desc = reply.get("resultDesc") or reply.get("returnDesc")
        desc = self._redact(str(desc)) if desc else None
        if code == TOO_FREQUENT:
            raise ApiUnavailableError(f"{call}: {describe_code(code, desc)}")
        raise ApiRejectedError(shown(code, 20), describe_code(code, desc))

    def _refused(self, call: str, status: int, reply: dict[str, Any] | None) -> dict[str, Any]:
        """A 4xx other than 401 and 429: the body's resultCode decides when there is one."""
        if reply is not None and ("resultCode" in reply or "returnCode" in reply):
            self._outcome(call, reply)  # raises for anything but success
            # Success in a 4xx: the reply contradicts itself; it may have been acted on.
            raise ApiReplyError(f"{call}: iSales answered HTTP {status} with a success code")
        if status in (404, 405):
            raise ApiUnavailableError(
                f"{call}: iSales answered HTTP {status}: no such call at this address; check "
                "isales.base_url and isales.vdn_id"
            )
        if status == 408:
            raise ApiUnavailableError(f"{call}: iSales timed out reading the request (HTTP 408)")
        if status == 403:
            raise SignatureRefusedError(
                f"{call}: iSales refused access (HTTP 403): check that the access key may use "
                "this call and VDN"
            )
        raise ApiRejectedError(f"http-{status}", f"{call}: iSales answered HTTP {status}")
