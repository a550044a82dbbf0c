"""Listings of crowded inboxes at the cost of one ``stat``: the last listing, kept while the
folder's modification time says nothing came or went.

A folder's mtime changes when a name is added, removed or renamed in it, not when a file in it
is written to; so a file still being written is watched by listing again (``fresh``), never by
the mtime. Times are compared only with themselves, never with our clock. A server whose mtime
is coarse (whole seconds over SFTP, two on FAT) could show the same mtime before and after a
change made in the same tick: a listing is trusted only when the mtime it was made under had
been seen unchanged for ``trust_after_s`` before it, and every ``full_every`` polls the folder
is listed whatever its mtime says (a server that never updates it is still seen).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from watcher.errors import FileGoneError
from watcher.models import RemoteEntry
from watcher.sources import Source

__all__ = ("Listings",)


_T = TypeVar("_T")


@dataclass(slots=True)
class _Listing(Generic[_T]):
    mtime: int | None
    since: float  # our clock, when this mtime was first seen
    entries: list[_T]
    trusted: bool
    reused: int = 0


class Listings:
    """Each inbox's last listing, re-used while its folder is unchanged."""

    def __init__(
        self,
        source: Source,
        *,
        full_every: int,
        trust_after_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._full_every = full_every
        self._trust_after_s = trust_after_s
        self._clock = clock
        self._files: dict[str, _Listing[Any]] = {}
        self._folders: dict[str, _Listing[Any]] = {}
        self.listed = 0  # listings made (the rest were re-used): for the tests and bench
        self.reused = 0

    async def files(self, folder: str, *, fresh: bool = False) -> list[RemoteEntry]:
        """The regular files in ``folder``; listed afresh when ``fresh`` (a file there is still
        settling) or when the folder may have changed."""
        return await self._cached(self._files, folder, fresh, self._source.list_files)

    async def folders(self, folder: str) -> list[str]:
        """The folders in ``folder`` (a template route's campaign folders), on the same terms."""
        return await self._cached(self._folders, folder, False, self._source.list_folders)

    async def _cached(
        self,
        kept: dict[str, _Listing[Any]],
        folder: str,
        fresh: bool,
        listing: Callable[[str], Awaitable[list[_T]]],
    ) -> list[_T]:
        try:
            mtime = await self._source.folder_mtime(folder)
        except FileGoneError:
            kept.pop(folder, None)
            return await listing(folder)  # which makes it
        now = self._clock()
        last = kept.get(folder)
        since = last.since if last is not None and last.mtime == mtime else now
        if (
            not fresh
            and mtime is not None
            and last is not None
            and last.mtime == mtime
            and last.trusted
            and last.reused + 1 < self._full_every
        ):
            last.reused += 1
            self.reused += 1
            entries: list[_T] = last.entries
            return entries
        found = await listing(folder)
        self.listed += 1
        kept[folder] = _Listing(mtime, since, found, now - since >= self._trust_after_s)
        return found
