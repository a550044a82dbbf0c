"""Where dropped files are seen and moved: the file operations the flow needs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from watcher.errors import WorkbookRejected
from watcher.models import RemoteEntry

__all__ = ("Source", "too_large")


def too_large(path: str, max_bytes: int) -> WorkbookRejected:
    """The verdict on a file bigger than the daemon takes (``validation.max_file_bytes``)."""
    if max_bytes >= 1_000_000:
        limit = f"{max_bytes / 1e6:,.0f} MB"
    elif max_bytes >= 1000:
        limit = f"{max_bytes / 1e3:,.0f} KB"
    else:
        limit = f"{max_bytes:,} bytes"
    return WorkbookRejected(
        "too_large",
        f"the file is larger than {limit}, the most this service takes "
        "(validation.max_file_bytes); split the list",
    )


class Source(Protocol):
    """File operations on the file server, each with a deadline.

    Implementations map their own errors to ``SourceUnavailableError``, ``FileGoneError`` and
    ``ClaimConflictError``.
    """

    async def list_files(self, folder: str) -> list[RemoteEntry]:
        """Regular files directly in ``folder`` (an absent folder is created, then empty)."""
        ...

    async def list_folders(self, folder: str) -> list[str]:
        """Names of the folders directly in ``folder`` (an absent folder is created, then empty)."""
        ...

    async def read_ends(
        self, path: str, size_bytes: int, head_bytes: int, tail_bytes: int
    ) -> tuple[bytes, bytes]:
        """The first ``head_bytes`` and the last ``tail_bytes`` of a file of ``size_bytes``,
        in one open (the gate asks this of every stable candidate)."""
        ...

    async def makedirs(self, path: str) -> None: ...

    async def rename(self, source: str, target: str) -> None:
        """Move without ever overwriting ``target``."""
        ...

    async def exists(self, path: str) -> bool: ...

    async def download(self, path: str, local: Path, max_bytes: int | None = None) -> str:
        """Copy ``path`` to ``local``; returns the SHA-256 of the bytes.

        Raises:
            WorkbookRejected: the file grew past ``max_bytes`` (kind ``too_large``).
        """
        ...

    async def write_file(self, path: str, data: bytes) -> None:
        """Write our own small file (a receipt) so that a reader never sees half of it."""
        ...

    async def remove_file(self, path: str) -> None: ...

    async def remove_dir(self, path: str) -> None:
        """Remove an empty folder; a missing one is fine."""
        ...

    def change_event(self, folders: Sequence[str]) -> asyncio.Event | None:
        """An event set when something may have changed in ``folders``; None: poll only."""
        ...

    async def close(self) -> None: ...
