"""One daemon per inbox: a lease file in the inbox, written through the source.

Two daemons on one ledger are stopped by the state directory's lock; two daemons with ledgers of
their own (two hosts, a copy of a container) meet only in the inbox. Each inbox therefore holds
``.isales-watcher-lease.json``: the holder's host, pid, instance and a heartbeat counter that
it raises every ``lease_interval_s``.

- A daemon claims from an inbox only while it holds the lease, and only if it has read the lease
  back as its own within the last interval (its own monotonic clock: a daemon paused longer than
  that looks again before it claims).
- A lease held by someone else is live while its heartbeat moves. Whether it moves is judged on
  this daemon's clock, never the holder's: hosts' clocks may differ. A heartbeat that has not
  moved for ``lease_stale_after`` intervals is stale, and the lease is taken over (logged, with
  the previous holder).
- A new lease is made by renaming a file of our own onto the name, which never overwrites: of
  two daemons that find an inbox free, one gets it.
- A clean stop removes the lease, so a restart or another daemon may take the inbox at once;
  after a crash, the restarted daemon waits until its old lease is stale like anyone else.

What it does not guarantee: a takeover happens while the old holder may still be running (paused,
or cut off from the server); if it comes back, it reads the lease before its next claim and
stops, but a claim already under way when the takeover happened completes. Files that the old
holder had claimed stay in its ``processing/`` folders and its ledger.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import structlog

from watcher.errors import ClaimConflictError, FileGoneError, SourceRefusedError, WatcherError
from watcher.sources import Source

__all__ = ("LEASE_NAME", "InboxLeases", "LeaseHeldError")

log = structlog.get_logger(__name__)

LEASE_NAME = ".isales-watcher/lease.json"  # below the inbox
_MAX_LEASE_BYTES = 4096


class LeaseHeldError(WatcherError):
    """Another daemon holds this inbox's lease: this daemon leaves the inbox alone."""


@dataclass
class _Seen:
    """Another holder's lease as this daemon last saw it, and since when it has not changed."""

    text: bytes
    since: float


@dataclass
class _Held:
    beat: int
    verified_at: float  # monotonic: when we last read the lease back as ours


class InboxLeases:
    """The leases this daemon holds, or waits for, one per inbox."""

    def __init__(self, source: Source, *, interval_s: float, stale_after: int) -> None:
        self._source = source
        self._interval_s = interval_s
        self._stale_s = interval_s * stale_after
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "instance": secrets.token_hex(6),
        }
        self._held: dict[str, _Held] = {}
        self._seen: dict[str, _Seen] = {}
        self._clock = time.monotonic

    async def hold(self, inbox: str) -> None:
        """Make sure this daemon holds ``inbox``'s lease now; renew it when due.

        Raises:
            LeaseHeldError: another live daemon holds it.
            SourceUnavailableError, SourceRefusedError: the lease could not be read or written.
        """
        held = self._held.get(inbox)
        if held is not None and self._clock() - held.verified_at < self._interval_s:
            return
        path = posixpath.join(inbox, LEASE_NAME)
        text = await self._read(path)
        if text is None:
            await self._create(inbox, path)
            return
        lease = _parse(text)
        if held is not None and _is(lease, self.me):
            await self._write(inbox, path, held.beat + 1)
            return
        if held is not None:
            del self._held[inbox]
            log.error("route.lease_lost", inbox=inbox, holder=_describe(lease))
        await self._contend(inbox, path, text, lease)

    async def _contend(self, inbox: str, path: str, text: bytes, lease: dict[str, Any]) -> None:
        """Someone else's lease (or one left by a crash of ours): wait for it, or take it over.

        A lease is never judged by its host and pid: containers share host names (host
        networking) and pids (1), and may not see each other's processes.
        """
        now = self._clock()
        seen = self._seen.get(inbox)
        if seen is None or seen.text != text:
            seen = self._seen[inbox] = _Seen(text, now)
        if now - seen.since < self._stale_s:
            raise LeaseHeldError(
                f"the inbox {inbox} is worked by another isales-watcher ({_describe(lease)}, "
                f"{LEASE_NAME}); this daemon leaves it alone. Stop the other one, or give each "
                f"daemon its own inboxes. A lease whose heartbeat stops for "
                f"{self._stale_s:g} s is taken over."
            )
        log.warning(
            "route.lease_taken_over",
            inbox=inbox,
            previous=_describe(lease),
            why=f"no heartbeat for {now - seen.since:.0f} s",
        )
        self._seen.pop(inbox, None)
        await self._write(inbox, path, int(lease.get("beat", 0)) + 1)

    async def _create(self, inbox: str, path: str) -> None:
        """Make the lease by a rename that never overwrites: one of two contenders wins."""
        folder = posixpath.dirname(path)
        draft = posixpath.join(folder, f".isales-watcher-{secrets.token_hex(8)}.tmp")
        await self._source.makedirs(folder)
        await self._source.write_file(draft, self._body(1))
        try:
            await self._source.rename(draft, path)
        except ClaimConflictError:
            with contextlib.suppress(WatcherError):
                await self._source.remove_file(draft)
            raise LeaseHeldError(
                f"another isales-watcher took the inbox {inbox} at the same moment"
            ) from None
        self._held[inbox] = _Held(1, self._clock())
        log.info("route.lease_taken", inbox=inbox)

    async def _write(self, inbox: str, path: str, beat: int) -> None:
        await self._source.write_file(path, self._body(beat))
        if inbox not in self._held:
            log.info("route.lease_taken", inbox=inbox)
        self._held[inbox] = _Held(beat, self._clock())

    def _body(self, beat: int) -> bytes:
        return json.dumps({**self.me, "beat": beat, "interval_s": self._interval_s}).encode()

    async def _read(self, path: str) -> bytes | None:
        try:
            return await self._source.read_file(path, _MAX_LEASE_BYTES)
        except FileGoneError:
            return None
        except SourceRefusedError as exc:
            raise SourceRefusedError(
                f"the inbox lease {path} cannot be read ({exc}); it must be a plain file that "
                "only isales-watcher writes: remove whatever is there"
            ) from None

    async def renew(self) -> None:
        """Renew every lease held, apart from the watch loop: a slow pass never loses one."""
        for inbox in list(self._held):
            with contextlib.suppress(WatcherError):
                await self.hold(inbox)

    async def release(self) -> None:
        """On a clean stop: remove the leases still ours, so the inboxes are free at once."""
        for inbox in list(self._held):
            path = posixpath.join(inbox, LEASE_NAME)
            with contextlib.suppress(WatcherError):
                text = await self._read(path)
                if text is not None and _is(_parse(text), self.me):
                    await self._source.remove_file(path)
            del self._held[inbox]


_FIELDS = {"host": str, "pid": int, "instance": str, "beat": int}


def _parse(text: bytes) -> dict[str, Any]:
    """The lease, or {} (an unreadable lease) when it is not what a daemon writes."""
    try:
        lease = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(lease, dict):
        return {}
    for key, kind in _FIELDS.items():
        if not isinstance(lease.get(key), kind) or isinstance(lease.get(key), bool):
            return {}
    return lease


def _is(lease: dict[str, Any], me: dict[str, Any]) -> bool:
    return all(lease.get(key) == value for key, value in me.items())


def _describe(lease: dict[str, Any]) -> str:
    if not lease:
        return "an unreadable lease"
    return f"host {lease.get('host')!s:.64}, pid {lease.get('pid')!s:.12}"
