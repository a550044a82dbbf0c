"""systemd's notify protocol (sd_notify) over $NOTIFY_SOCKET, with the standard library only."""

from __future__ import annotations

import os
import socket

import structlog

__all__ = ("Notifier",)

log = structlog.get_logger(__name__)


class Notifier:
    """Tells systemd we are ready, still alive (watchdog), or stopping. Silent without systemd."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        # Half the watchdog period, as systemd advises; None when no watchdog is set for us.
        self.watchdog_s: float | None = None
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 2_000_000
        self._warned = False

    def send(self, message: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd.notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
