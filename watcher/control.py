"""The HTTP control plane: the status page, /healthz, /readyz, /metrics; on loopback by default."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp.web
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watcher.errors import ConfigError
from watcher.health import Health
from watcher.status import StatusPage

__all__ = ("ControlServer",)

log = structlog.get_logger(__name__)

_Handler = Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.StreamResponse]]

# Every answer: no script may run, nothing is framed, sniffed, cached or sent on as a referrer.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@aiohttp.web.middleware
async def _safe_headers(
    request: aiohttp.web.Request, handler: _Handler
) -> aiohttp.web.StreamResponse:
    try:
        response = await handler(request)
    except aiohttp.web.HTTPException as exc:  # 404, 405: the same headers
        exc.headers.update(_HEADERS)
        raise
    response.headers.update(_HEADERS)
    return response


class ControlServer:
    """Serves the probes, the metrics and (with ``page``) the status page of one daemon."""

    def __init__(self, health: Health, listen: str, *, page: StatusPage | None = None) -> None:
        self._health = health
        self._listen = listen
        self._page = page
        self._runner: aiohttp.web.AppRunner | None = None
        self.address = ""
        app = aiohttp.web.Application(middlewares=[_safe_headers])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        if page is not None:
            app.router.add_get("/", self._status)
            app.router.add_get("/status.css", self._stylesheet)
            app.router.add_get("/receipts/{file_id}", self._receipt)
        self._app = app

    async def start(self) -> None:
        host, _, port = self._listen.rpartition(":")
        self._runner = aiohttp.web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        try:
            await aiohttp.web.TCPSite(self._runner, host.strip("[]"), int(port)).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"daemon.control_listen: cannot listen on {self._listen}: {exc.strerror}"
            ) from None
        bound = self._runner.addresses[0]
        self.address = f"{bound[0]}:{bound[1]}"
        log.info("control.listening", address=self.address)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        ok, details = self._health.liveness()
        return aiohttp.web.json_response({"ok": ok, **details}, status=200 if ok else 503)

    async def _readyz(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        ok, details = self._health.readiness()
        return aiohttp.web.json_response({"ok": ok, **details}, status=200 if ok else 503)

    async def _metrics(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        body = generate_latest(self._health.registry)
        return aiohttp.web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        assert self._page is not None
        return aiohttp.web.Response(text=self._page.render(), content_type="text/html")

    async def _stylesheet(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        assert self._page is not None
        return aiohttp.web.Response(text=self._page.stylesheet, content_type="text/css")

    async def _receipt(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        assert self._page is not None
        text = self._page.receipt(request.match_info["file_id"])
        if text is None:
            raise aiohttp.web.HTTPNotFound(text="no receipt for that file\n")
        return aiohttp.web.Response(text=text, content_type="text/plain", charset="utf-8")
