"""Where dropped files are seen and moved: the file operations the flow needs."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from watcher.errors import SkipFileError, SourceRefusedError, WatcherError, WorkbookRejected
from watcher.models import RemoteEntry

if TYPE_CHECKING:
    from watcher.settings import Settings

__all__ = ("OWN_FOLDERS", "OddNames", "Source", "check_access", "make_source", "too_large")

log = structlog.get_logger(__name__)


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

    async def folder_mtime(self, folder: str) -> int | None:
        """The folder's modification time, in the server's own unit (compared only with itself);
        None when the server does not say (then the folder is listed at every poll).

        Raises:
            FileGoneError: there is no such folder.
        """
        ...

    async def read_ends(
        self, path: str, size_bytes: int, head_bytes: int, tail_bytes: int
    ) -> tuple[bytes, bytes]:
        """The first ``head_bytes`` and the last ``tail_bytes`` of a file of ``size_bytes``,
        in one open (the gate asks this of every stable candidate)."""
        ...

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        """At most the first ``max_bytes`` of a small file of ours (a lease)."""
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

    def stalled_s(self) -> float:
        """How long a call that cannot be cancelled (a thread in a hung mount) has run; 0: none."""
        ...

    async def close(self) -> None: ...


class OddNames:
    """Names a listing cannot use, each warned of once: not UTF-8 (iSales takes UTF-8 names)."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def usable(self, folder: str, name: str | bytes) -> str | None:
        """``name`` as text, or None (warned once) when it is not valid UTF-8."""
        if isinstance(name, str):
            try:
                name.encode()
            except UnicodeEncodeError:  # undecodable bytes, kept as surrogates by os.scandir
                shown = name.encode(errors="surrogateescape")
            else:
                return name
        else:
            try:
                return name.decode()
            except UnicodeDecodeError:
                shown = name
        key = f"{folder}/{shown!r}"
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "source.name_not_utf8",
                folder=folder,
                name=repr(shown),
                advice="rename the file: its name is not UTF-8, which iSales needs; it is left "
                "where it is",
            )
        return None


def make_source(settings: Settings) -> Source:
    """The source the configuration names: SFTP, or the local disk beside the file server."""
    if settings.daemon.source == "local":
        from watcher.sources.local import LocalSource

        assert settings.local is not None
        return LocalSource(settings.local, settings.sftp.base_path, settings.sftp.op_timeout_s)
    from watcher.sources.sftp import SftpSource

    return SftpSource(settings.sftp)


# One probe name per process: a refusal then reads the same at every re-check, and the daemon
# says it once (daemon._scan_contained); another process (check, a second daemon) has its own.
_PROBE_NAME = f".isales-watcher-probe-{secrets.token_hex(4)}"
# Where a file goes after the inbox, and why the daemon needs to write there.
_FLOW_FOLDERS = (
    ("processing", "to claim dropped files"),
    ("done", "to settle imported files there"),
    ("rejected", "to settle rejected files there"),
)
# The folders the daemon makes in every inbox (the lease's too): never a link.
OWN_FOLDERS = frozenset({*(name for name, _ in _FLOW_FOLDERS), ".isales-watcher"})


async def check_access(source: Source, inbox: str, *, folders: bool = True) -> None:
    """Prove that the daemon may do in ``inbox`` what a file's flow needs, with a file of its own.

    It writes a probe file in the inbox, creates its folders (with ``folders``) and moves the
    probe through ``processing/``, ``done/`` and ``rejected/`` as a file's flow moves it.
    Nothing the users dropped is touched, so a refusal here leaves no file half-claimed.

    Raises:
        SourceRefusedError: naming the folder and the permission the daemon lacks.
        SourceUnavailableError: the file server cannot be reached.
    """
    await _make_folder(source, inbox, posixpath.dirname(inbox))
    # The inbox first: a read-only inbox is named as such, not as a processing/ that cannot be
    # made in it.
    probe = posixpath.join(inbox, _PROBE_NAME)
    try:
        await source.write_file(probe, b"isales-watcher access check\n")
    except SourceRefusedError as exc:
        raise SourceRefusedError(
            f"the daemon cannot write in {inbox}: it needs write permission on that folder to "
            f"move dropped files out of it ({exc})"
        ) from None
    if not folders:
        await _remove(source, probe)
        return
    here = probe
    try:
        for name, _ in _FLOW_FOLDERS:
            await _make_folder(source, posixpath.join(inbox, name), inbox)
        for name, why in _FLOW_FOLDERS:
            folder = posixpath.join(inbox, name)
            there = posixpath.join(folder, _PROBE_NAME)
            try:
                await source.rename(here, there)
            except (SourceRefusedError, SkipFileError) as exc:
                # The probe is ours and left a folder we may write in: the target is at fault.
                raise SourceRefusedError(
                    f"the daemon cannot move files into {folder}: it needs write permission on "
                    f"that folder {why} ({exc})"
                ) from None
            here = there
    finally:
        await _remove(source, here)


async def _make_folder(source: Source, folder: str, parent: str) -> None:
    try:
        await source.makedirs(folder)
    except SourceRefusedError as exc:
        raise SourceRefusedError(
            f"{exc}. The daemon needs {folder} to be a real folder that it may write in "
            f"(to create it: write permission on {parent})"
        ) from None


async def _remove(source: Source, path: str) -> None:
    with contextlib.suppress(WatcherError):
        await source.remove_file(path)
