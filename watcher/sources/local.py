"""The local source: the daemon runs beside the file server and sees its disk (a sidecar).

Paths stay in the file server's terms (``/home/sftp/inbox/...``), so ``filePath`` for iSales is
the same as in SFTP mode; they are mapped onto ``local.base_dir`` here. watchfiles events wake
the poll loop early; the periodic full listing stays, because inotify misses changes made on
NFS or SMB (``force_polling`` makes watchfiles poll too).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import posixpath
import secrets
from collections.abc import Sequence
from pathlib import Path

import structlog
import watchfiles

from watcher.errors import ClaimConflictError, FileGoneError, SourceUnavailableError
from watcher.models import RemoteEntry
from watcher.settings import LocalSettings
from watcher.sources import too_large

__all__ = ("LocalSource",)

log = structlog.get_logger(__name__)

_CHUNK_BYTES = 1 << 20


class LocalSource:
    """File operations on a local directory that mirrors the file server's default path."""

    def __init__(self, settings: LocalSettings, base_path: str) -> None:
        self._settings = settings
        self._base_path = posixpath.normpath(base_path)
        self._changed: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _local(self, path: str) -> Path:
        relative = posixpath.relpath(posixpath.normpath(path), self._base_path)
        if relative == ".." or relative.startswith("../"):
            raise SourceUnavailableError(f"{path} is outside {self._base_path}")
        return self._settings.base_dir / relative

    def change_event(self, folders: Sequence[str]) -> asyncio.Event:
        """An event set whenever something changes in ``folders`` (watchfiles)."""
        if self._changed is None:
            self._changed = asyncio.Event()
            self._watcher = asyncio.create_task(self._watch([self._local(f) for f in folders]))
        return self._changed

    async def _watch(self, folders: list[Path]) -> None:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        assert self._changed is not None
        try:
            async for _ in watchfiles.awatch(
                *folders,
                stop_event=self._stop,
                recursive=True,  # campaign folders of template routes lie below
                debounce=200,
                force_polling=self._settings.force_polling or None,
            ):
                self._changed.set()
        except (OSError, RuntimeError) as exc:
            # Events are a help, not a need: the periodic listing still finds every file.
            log.warning("local.watch_failed", error=str(exc))

    async def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def list_files(self, folder: str) -> list[RemoteEntry]:
        local = self._local(folder)
        try:
            local.mkdir(parents=True, exist_ok=True)
            entries = []
            with os.scandir(local) as listing:
                for item in listing:
                    if item.is_file(follow_symlinks=False):
                        stat = item.stat(follow_symlinks=False)
                        entries.append(RemoteEntry(item.name, stat.st_size, stat.st_mtime_ns))
            return entries
        except OSError as exc:
            raise SourceUnavailableError(f"listing {local}: {exc.strerror}") from None

    async def list_folders(self, folder: str) -> list[str]:
        local = self._local(folder)
        try:
            local.mkdir(parents=True, exist_ok=True)
            with os.scandir(local) as listing:
                return [item.name for item in listing if item.is_dir(follow_symlinks=False)]
        except OSError as exc:
            raise SourceUnavailableError(f"listing {local}: {exc.strerror}") from None

    async def read_ends(
        self, path: str, size_bytes: int, head_bytes: int, tail_bytes: int
    ) -> tuple[bytes, bytes]:
        try:
            with self._local(path).open("rb") as file:
                head = file.read(head_bytes)
                file.seek(max(0, size_bytes - tail_bytes))
                return head, file.read(tail_bytes)
        except FileNotFoundError:
            raise FileGoneError(f"reading {path}: no such file") from None
        except OSError as exc:
            raise SourceUnavailableError(f"reading {path}: {exc.strerror}") from None

    async def makedirs(self, path: str) -> None:
        try:
            self._local(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceUnavailableError(f"creating {path}: {exc.strerror}") from None

    async def rename(self, source: str, target: str) -> None:
        # link + unlink never overwrites: link fails if the target exists.
        old, new = self._local(source), self._local(target)
        try:
            os.link(old, new)
        except FileExistsError:
            raise ClaimConflictError(f"{target} already exists") from None
        except FileNotFoundError:
            raise FileGoneError(f"{source} vanished") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise SourceUnavailableError(f"renaming {source}: {exc.strerror}") from None
            # No hard links on this file system: check, then rename (a small race remains).
            if new.exists():
                raise ClaimConflictError(f"{target} already exists") from None
            try:
                old.rename(new)
            except FileNotFoundError:
                raise FileGoneError(f"{source} vanished") from None
            return
        with contextlib.suppress(FileNotFoundError):
            old.unlink()

    async def exists(self, path: str) -> bool:
        return self._local(path).exists()

    async def download(self, path: str, local: Path, max_bytes: int | None = None) -> str:
        try:
            # A copy of tens of megabytes: in a thread, so the event loop keeps its pace.
            return await asyncio.to_thread(_copy_and_hash, self._local(path), local, max_bytes)
        except FileNotFoundError:
            raise FileGoneError(f"copying {path}: no such file") from None
        except OSError as exc:
            raise SourceUnavailableError(f"copying {path}: {exc.strerror}") from None

    async def write_file(self, path: str, data: bytes) -> None:
        target = self._local(path)
        # A short, fixed-length dotfile name: never too long, and never taken for a drop.
        temporary = target.with_name(f".isales-watcher-{secrets.token_hex(8)}.tmp")
        try:
            temporary.write_bytes(data)
            temporary.replace(target)
        except OSError as exc:
            raise SourceUnavailableError(f"writing {path}: {exc.strerror}") from None

    async def remove_file(self, path: str) -> None:
        try:
            self._local(path).unlink()
        except FileNotFoundError:
            raise FileGoneError(f"removing {path}: no such file") from None

    async def remove_dir(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self._local(path).rmdir()


def _copy_and_hash(source: Path, target: Path, max_bytes: int | None) -> str:
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(_CHUNK_BYTES):
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise too_large(str(source), max_bytes)
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()
