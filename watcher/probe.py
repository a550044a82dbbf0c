"""``isales-watcher probe live|ready``: ask a running daemon's control port, for health checks.

A container's ``HEALTHCHECK`` (or a Kubernetes ``exec`` probe) runs this instead of curl, which
the image does not carry. It reads only ``daemon.control_listen`` (from the file, or from its
``ISALES_WATCHER_DAEMON__CONTROL_LISTEN`` override), not the rest of the configuration: a probe
must answer quickly and must not need the secrets.
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

__all__ = ("ProbeError", "control_address", "probe")

_PATHS = {"live": "/healthz", "ready": "/readyz"}
_DEFAULT_LISTEN = "127.0.0.1:9187"
# The control port is local: never through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class ProbeError(Exception):
    """The daemon could not be asked, or said no: the message says why."""


def control_address(config: Path) -> str:
    """The ``host:port`` to ask, from ``daemon.control_listen``.

    Raises:
        ProbeError: the file cannot be read, or the control plane is off or on port 0.
    """
    listen = os.environ.get("ISALES_WATCHER_DAEMON__CONTROL_LISTEN")
    if listen is None:
        try:
            data = tomllib.loads(config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ProbeError(f"cannot read {config}: {exc}") from None
        listen = str(data.get("daemon", {}).get("control_listen", _DEFAULT_LISTEN))
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        raise ProbeError(
            f"daemon.control_listen is {listen!r}: the probe needs a fixed port (say "
            f"{_DEFAULT_LISTEN})"
        )
    host = host.strip("[]")
    host = _WILDCARDS.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _summary(body: dict[str, Any]) -> str:
    failed = [name for name, ok in body.get("checks", {}).items() if not ok]
    facts = {k: v for k, v in body.items() if k not in ("ok", "checks")}
    text = ", ".join(f"{k}={v}" for k, v in facts.items())
    if failed:
        text = f"failed: {', '.join(failed)}" + (f"; {text}" if text else "")
    return text


def probe(address: str, which: Literal["live", "ready"], timeout_s: float) -> str:
    """Ask ``/healthz`` or ``/readyz``; return the daemon's reasons when it says yes.

    Raises:
        ProbeError: no answer in time, or a no (the reasons are in the message).
    """
    url = f"http://{address}{_PATHS[which]}"
    try:
        with _OPENER.open(url, timeout=timeout_s) as answer:
            return _summary(json.load(answer))
    except urllib.error.HTTPError as exc:
        try:
            reasons = _summary(json.load(exc))
        except ValueError:
            reasons = f"HTTP {exc.code}"
        raise ProbeError(reasons) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProbeError(f"no answer from {url}: {reason}") from None
