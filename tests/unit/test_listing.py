"""The listing cache: one stat per poll for an unchanged inbox, never a missed file."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.errors import FileGoneError
from watcher.models import RemoteEntry
from watcher.sources.listing import Listings


class Folder:
    """A folder on a server whose mtime has whole seconds, and a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.mtime = 1000
        self.names: list[str] = []
        self.listings = 0
        self.gone = False

    def add(self, name: str) -> None:
        self.names.append(name)
        self.mtime = int(self.now)  # the server's second: coarse

    async def folder_mtime(self, folder: str) -> int:
        if self.gone:
            raise FileGoneError(folder)
        return self.mtime

    async def list_files(self, folder: str) -> list[RemoteEntry]:
        self.listings += 1
        self.gone = False
        return [RemoteEntry(name, 1, self.mtime) for name in self.names]


def listings(folder: Folder, full_every: int = 100) -> Listings:
    source: Any = folder
    return Listings(source, full_every=full_every, clock=lambda: folder.now)


async def test_an_unchanged_folder_is_listed_once_then_only_stat_ed():
    folder = Folder()
    cache = listings(folder)
    for _ in range(30):
        await cache.files("/in")
        folder.now += 1
    # Listed until its mtime had been still for 2 s, then re-used.
    assert folder.listings == 3
    assert cache.reused == 27


async def test_a_file_added_in_the_same_second_as_the_listing_is_not_missed():
    folder = Folder()
    cache = listings(folder)
    folder.now = 1000.2
    assert await cache.files("/in") == []  # mtime 1000, first seen now: not trusted
    folder.add("late.xlsx")  # still second 1000: the mtime does not change
    folder.now = 1000.7
    assert [e.name for e in await cache.files("/in")] == ["late.xlsx"]


async def polled(folder: Folder, cache: Listings, times: int = 5) -> None:
    for _ in range(times):
        await cache.files("/in")
        folder.now += 1


async def test_a_change_is_seen_by_the_next_poll():
    folder = Folder()
    cache = listings(folder)
    await polled(folder, cache)
    folder.add("new.xlsx")
    assert [e.name for e in await cache.files("/in")] == ["new.xlsx"]


async def test_fresh_lists_whatever_the_mtime_says():
    folder = Folder()
    cache = listings(folder)
    await polled(folder, cache)
    before = folder.listings
    await cache.files("/in", fresh=True)  # a file there still being written: its size changes
    assert folder.listings == before + 1


@pytest.mark.parametrize("full_every", [1, 4, 12])
async def test_the_folder_is_listed_every_n_polls_whatever_its_mtime(full_every):
    folder = Folder()
    cache = listings(folder, full_every=full_every)
    await polled(folder, cache)
    before = folder.listings
    await polled(folder, cache, full_every * 3)
    assert folder.listings - before == 3


async def test_a_missing_folder_is_listed_which_makes_it():
    folder = Folder()
    folder.gone = True
    cache = listings(folder)
    assert await cache.files("/in") == []
    assert folder.listings == 1


async def test_a_server_that_gives_no_mtime_is_listed_at_every_poll():
    folder = Folder()
    folder.mtime = None  # type: ignore[assignment]
    cache = listings(folder)
    await polled(folder, cache, 10)
    assert folder.listings == 10


async def test_a_template_route_s_campaign_folders_are_cached_the_same_way():
    folder = Folder()
    folder.names = ["1647"]

    async def list_folders(path: str) -> list[str]:
        folder.listings += 1
        return list(folder.names)

    folder.list_folders = list_folders  # type: ignore[attr-defined]
    cache = listings(folder)
    for _ in range(6):
        assert await cache.folders("/campaigns") == ["1647"]
        folder.now += 1
    assert folder.listings == 3  # then one stat per poll
    folder.add("1648")
    assert await cache.folders("/campaigns") == ["1647", "1648"]
