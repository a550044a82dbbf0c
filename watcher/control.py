"""The HTTP control plane: /healthz, /readyz and /metrics, on loopback by default."""

from __future__ import annotations

import aiohttp.web
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watcher.errors import ConfigError
from watcher.health import Health

__all__ = ("ControlServer",)

log = structlog.get_logger(__name__)


class ControlServer:
    """Serves the probes and the metrics of one daemon."""

    def __init__(self, health: Health, listen: str) -> None:
        self._health = health
        self._listen = listen
        self._runner: aiohttp.web.AppRunner | None = None
        self.address = ""
        app = aiohttp.web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
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
