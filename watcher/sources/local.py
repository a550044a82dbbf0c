"""The local source: the daemon runs beside the file server and sees its disk (a sidecar).

Paths stay in the file server's terms (``/home/sftp/inbox/...``), so ``filePath`` for iSales is
the same as in SFTP mode; they are mapped onto ``local.base_dir`` here. watchfiles events wake
the poll loop early; the periodic full listing stays, because inotify misses changes made on
NFS or SMB (``force_polling`` makes watchfiles poll too).

Nothing below ``base_dir`` is ever followed as a symbolic link: every folder is opened one name
at a time with ``O_NOFOLLOW``, and files are opened, linked, renamed and created relative to
those folder handles. A link where a folder should be (``done`` pointing elsewhere) is an error
that names it; a link dropped as a file is ignored with a warning. Every call runs in a thread
of its own under the same deadline as an SFTP operation, so a hung network mount turns the
health checks red instead of freezing the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import posixpath
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import structlog
import watchfiles

from watcher.errors import (
    ClaimConflictError,
    FileGoneError,
    SourceDeniedError,
    SourceRefusedError,
    SourceUnavailableError,
    TransientError,
    WatcherError,
)
from watcher.models import RemoteEntry
from watcher.settings import LocalSettings
from watcher.sources import OddNames, too_large

__all__ = ("LocalSource",)

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_CHUNK_BYTES = 1 << 20
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO never blocks open
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_HUNG_CALLS = 16  # calls that never returned; past this, no new call is started
_DAEMON_FOLDERS = frozenset({"processing", "done", "rejected"})
# The disk's or the mount's trouble, not one path's: the whole pass waits. Anything else is the
# trouble of the path at hand (a permission, a link, a socket where a file should be).
_DISK_GONE = frozenset(
    {
        errno.EIO,
        errno.ESTALE,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ECONNABORTED,
        errno.ECONNRESET,
        errno.ENOLINK,
        errno.EREMOTEIO,
        errno.ENODEV,
        errno.ENOMEDIUM,
    }
)


class _NotAFolderError(OSError):
    """A name that must be a real folder is a symbolic link, or not a folder at all."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.ENOTDIR, f"{name!r} is a symbolic link or not a folder")


class _Progress:
    """When a long call (a copy) last moved forward: its deadline runs from there."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def moved(self) -> None:
        self.at = time.monotonic()


class LocalSource:
    """File operations on a local directory that mirrors the file server's default path."""

    def __init__(self, settings: LocalSettings, base_path: str, op_timeout_s: float = 60.0) -> None:
        self._settings = settings
        self._base_path = posixpath.normpath(base_path)
        self._timeout_s = op_timeout_s
        self._changed: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._started: dict[int, float] = {}  # calls not returned yet: when each began
        self._calls = 0
        self._links_seen: set[str] = set()
        self._odd = OddNames()

    # -- paths -------------------------------------------------------------------------------

    def _parts(self, path: str) -> list[str]:
        """The names from ``base_dir`` down to ``path``; never outside it."""
        relative = posixpath.relpath(posixpath.normpath(path), self._base_path)
        parts = [part for part in relative.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise SourceRefusedError(f"{path} is outside {self._base_path}")
        return parts

    def _open_folder(self, parts: Sequence[str], *, create: bool = False) -> int:
        """A handle on the folder ``parts`` below ``base_dir``, opened one name at a time."""
        fd = os.open(self._settings.base_dir, _FOLDER & ~os.O_NOFOLLOW)  # the operator's choice
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                try:
                    child = os.open(part, _FOLDER, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _NotAFolderError(part) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _folder_of(self, path: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """(handle on the folder holding ``path``, the last name of ``path``)."""
        parts = self._parts(path)
        if not parts:
            raise SourceRefusedError(f"{path} is the base folder itself")
        fd = self._open_folder(parts[:-1], create=create)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    # -- running calls off the event loop, under a deadline ----------------------------------

    async def _call(
        self, what: str, work: Callable[[], _T], progress: _Progress | None = None
    ) -> _T:
        """Run ``work`` in a thread; errors become the source's errors, a hang a deadline."""
        if len(self._started) >= _MAX_HUNG_CALLS:
            raise SourceUnavailableError(
                f"{what}: {len(self._started)} file system calls have not returned; the disk "
                f"or mount under {self._settings.base_dir} is hung"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        # An answer that comes after its waiter was cancelled is read here, never reported.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._calls += 1
        call = self._calls
        self._started[call] = time.monotonic()

        def done(result: _T | None, error: BaseException | None) -> None:
            self._started.pop(call, None)
            if future.done():
                return  # given up on after its deadline
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def run() -> None:
            try:
                result, error = work(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(done, result, error)

        threading.Thread(target=run, name="isales-watcher-fs", daemon=True).start()
        progress = progress or _Progress()
        try:
            while True:
                left_s = progress.at + self._timeout_s - time.monotonic()
                if left_s <= 0:
                    future.cancel()
                    raise SourceUnavailableError(
                        f"{what}: no answer from the file system within {self._timeout_s:g} s "
                        f"(a hung mount under {self._settings.base_dir}?)"
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left_s):
                        return await asyncio.shield(future)
        except OSError as exc:
            raise _source_error(what, exc) from None

    # -- the Source protocol -----------------------------------------------------------------

    def stalled_s(self) -> float:
        """How long the oldest file system call still running has been running (0: none)."""
        return time.monotonic() - min(self._started.values(), default=time.monotonic())

    def change_event(self, folders: Sequence[str]) -> asyncio.Event:
        """An event set whenever something changes in ``folders`` (watchfiles)."""
        if self._changed is None:
            self._changed = asyncio.Event()
            self._watcher = asyncio.create_task(self._watch(folders))
        return self._changed

    async def _watch(self, folders: Sequence[str]) -> None:
        assert self._changed is not None
        try:
            for folder in folders:
                await self.makedirs(folder)
            # Files that landed while the watch was being set up: one more listing just after.
            asyncio.get_running_loop().call_later(0.5, self._changed.set)
            async for _ in watchfiles.awatch(
                *[self._settings.base_dir.joinpath(*self._parts(f)) for f in folders],
                stop_event=self._stop,
                recursive=True,  # campaign folders of template routes lie below
                debounce=200,
                force_polling=self._settings.force_polling or None,
            ):
                self._changed.set()
        except Exception as exc:  # noqa: BLE001 - a name it cannot decode, an inotify limit...
            # Events are a help, not a need: the periodic listing still finds every file.
            log.warning("local.watch_failed", error=str(exc))

    async def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher

    async def _scan(self, folder: str) -> list[tuple[str, os.stat_result, str]]:
        """(name, lstat, kind) of each entry of ``folder`` (created when absent)."""

        def scan() -> list[tuple[str, os.stat_result, str]]:
            fd = self._open_folder(self._parts(folder), create=True)
            try:
                with os.scandir(fd) as listing:
                    return [(item.name, *_kind(item)) for item in listing]
            finally:
                os.close(fd)

        return await self._call(f"listing {folder}", scan)

    def _warn_link(self, folder: str, name: str) -> None:
        key = posixpath.join(folder, name)
        if key not in self._links_seen:
            self._links_seen.add(key)
            log.warning(
                "local.symlink_ignored",
                path=key,
                advice="a symbolic link in an inbox is never followed: drop the file itself",
            )

    async def list_files(self, folder: str) -> list[RemoteEntry]:
        entries = []
        for odd, info, kind in await self._scan(folder):
            name = self._odd.usable(folder, odd) if kind == "file" else odd
            if name is None:
                continue
            if kind == "file":
                entries.append(RemoteEntry(name, info.st_size, info.st_mtime_ns))
            elif kind == "link":
                self._warn_link(folder, name)
        return entries

    async def list_folders(self, folder: str) -> list[str]:
        names = []
        for odd, _, kind in await self._scan(folder):
            name = self._odd.usable(folder, odd) if kind == "folder" else odd
            if name is None:
                continue
            if kind == "folder":
                names.append(name)
            elif kind == "link":
                self._warn_link(folder, name)
        return names

    async def folder_mtime(self, folder: str) -> int | None:
        def look() -> int:
            fd = self._open_folder(self._parts(folder))
            try:
                return os.fstat(fd).st_mtime_ns
            finally:
                os.close(fd)

        return await self._call(f"looking at {folder}", look)

    async def read_ends(
        self, path: str, size_bytes: int, head_bytes: int, tail_bytes: int
    ) -> tuple[bytes, bytes]:
        def read() -> tuple[bytes, bytes]:
            with self._folder_of(path) as (folder, name), _open_file(folder, name) as fd:
                head = os.pread(fd, head_bytes, 0)
                return head, os.pread(fd, tail_bytes, max(0, size_bytes - tail_bytes))

        return await self._call(f"reading {path}", read)

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        def read() -> bytes:
            with self._folder_of(path) as (folder, name), _open_file(folder, name) as fd:
                return os.pread(fd, max_bytes, 0)

        return await self._call(f"reading {path}", read)

    async def makedirs(self, path: str) -> None:
        def make() -> None:
            fd = self._open_folder(self._parts(path), create=True)
            try:
                if posixpath.basename(path) in _DAEMON_FOLDERS:
                    _check_owner(fd, path)
            finally:
                os.close(fd)

        await self._call(f"creating {path}", make)

    async def rename(self, source: str, target: str) -> None:
        """Move without ever overwriting ``target``: link, then unlink the old name."""

        def move() -> None:
            with (
                self._folder_of(source) as (old_dir, old),
                self._folder_of(target) as (
                    new_dir,
                    new,
                ),
            ):
                _move(old_dir, old, new_dir, new, source)
                _own(new_dir, new, target)

        await self._call(f"renaming {source} to {target}", move)

    async def exists(self, path: str) -> bool:
        def look() -> bool:
            try:
                with self._folder_of(path) as (folder, name):
                    os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                return False
            return True

        return await self._call(f"checking {path}", look)

    async def download(self, path: str, local: Path, max_bytes: int | None = None) -> str:
        progress = _Progress()

        def copy() -> str:
            with self._folder_of(path) as (folder, name), _open_file(folder, name) as fd:
                return _copy_and_hash(fd, path, local, max_bytes, progress)

        return await self._call(f"copying {path}", copy, progress)

    async def write_file(self, path: str, data: bytes) -> None:
        def write() -> None:
            with self._folder_of(path) as (folder, name):
                # A short, fixed-length dotfile name: never too long, never taken for a drop.
                temporary = f".isales-watcher-{secrets.token_hex(8)}.tmp"
                fd = os.open(temporary, _CREATE, 0o644, dir_fd=folder)
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                    os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary, dir_fd=folder)
                    raise

        await self._call(f"writing {path}", write)

    async def remove_file(self, path: str) -> None:
        def remove() -> None:
            with self._folder_of(path) as (folder, name):
                os.unlink(name, dir_fd=folder)

        await self._call(f"removing {path}", remove)

    async def remove_dir(self, path: str) -> None:
        def remove() -> None:
            with self._folder_of(path) as (folder, name), contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=folder)  # not empty, gone, or a link: leave it

        with contextlib.suppress(FileGoneError):
            await self._call(f"removing {path}", remove)


def _kind(item: os.DirEntry[str]) -> tuple[os.stat_result, str]:
    info = item.stat(follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode):
        return info, "link"
    if stat.S_ISREG(info.st_mode):
        return info, "file"
    if stat.S_ISDIR(info.st_mode):
        return info, "folder"
    return info, "other"  # FIFOs, sockets, devices: never a drop


@contextlib.contextmanager
def _open_file(folder: int, name: str) -> Iterator[int]:
    """A regular file opened for reading, never through a link, never blocking on a FIFO."""
    fd = os.open(name, _READ, dir_fd=folder)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        yield fd
    finally:
        os.close(fd)


def _move(old_dir: int, old: str, new_dir: int, new: str, shown: str) -> None:
    """Link ``new`` to ``old``, then remove ``old``; undo the link when ``old`` stays."""
    if stat.S_ISLNK(os.stat(old, dir_fd=old_dir, follow_symlinks=False).st_mode):
        raise OSError(errno.ELOOP, f"{shown} is a symbolic link, which is never followed")
    try:
        os.link(old, new, src_dir_fd=old_dir, dst_dir_fd=new_dir, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # No hard link here (a file system without them, or a file the daemon does not own
        # under fs.protected_hardlinks): check, then rename. A small race remains.
        with contextlib.suppress(FileNotFoundError):
            os.stat(new, dir_fd=new_dir, follow_symlinks=False)
            raise FileExistsError(errno.EEXIST, "File exists") from None
        os.rename(old, new, src_dir_fd=old_dir, dst_dir_fd=new_dir)
        return
    try:
        os.unlink(old, dir_fd=old_dir)
    except FileNotFoundError:
        pass  # someone else removed the old name; the file lives on under the new one
    except OSError as exc:
        # A sticky folder (chmod +t) lets only a file's owner remove it: the file must stay
        # where it is, whole, and not also appear in processing/.
        with contextlib.suppress(OSError):
            os.unlink(new, dir_fd=new_dir)
        raise OSError(
            exc.errno,
            f"{exc.strerror}: the daemon may not remove {shown} from its folder; it needs "
            "permission to delete other users' files there (the folder is not writable for it, "
            "or sticky: chmod -t, or run the daemon as the uploaders' user)",
        ) from None


def _check_owner(folder: int, shown: str) -> None:
    """A folder of the daemon's own (processing/, done/, rejected/) must be the daemon's or
    root's: whoever owns it can move what lies in it."""
    owner = os.fstat(folder).st_uid
    if owner not in (os.geteuid(), 0):
        raise OSError(
            errno.EPERM,
            f"{shown} is owned by uid {owner}, not by the daemon's user (uid {os.geteuid()}): "
            "someone else made it, and could change the files in it; remove it (the daemon "
            "makes its own) or chown it to the daemon's user",
        )


def _own(folder: int, name: str, shown: str) -> None:
    """A claimed file the daemon does not own becomes a copy of its own, so that nobody else
    can change the bytes that are checked and that iSales will read. Best effort: when the copy
    fails (a full disk), the file stays claimed as it is, which is what a rename gives."""
    try:
        fd = os.open(name, _READ, dir_fd=folder)
    except OSError:
        return
    temporary = f".isales-watcher-{secrets.token_hex(8)}.tmp"
    try:
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() or not stat.S_ISREG(info.st_mode):
            return
        out = os.open(temporary, _CREATE, 0o644, dir_fd=folder)
        with os.fdopen(out, "wb") as writer:
            while chunk := os.read(fd, _CHUNK_BYTES):
                writer.write(chunk)
        os.utime(temporary, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=folder)
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        log.warning("local.copy_failed", path=shown, error=exc.strerror or str(exc))
    finally:
        os.close(fd)


def _copy_and_hash(
    fd: int, shown: str, target: Path, max_bytes: int | None, progress: _Progress
) -> str:
    digest = hashlib.sha256()
    size = 0
    try:
        writer = target.open("wb")
    except OSError as exc:
        raise TransientError(f"creating the work copy {target}: {exc.strerror}") from None
    with writer:
        while chunk := os.read(fd, _CHUNK_BYTES):
            progress.moved()
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise too_large(shown, max_bytes)
            digest.update(chunk)
            try:
                writer.write(chunk)
            except OSError as exc:
                raise TransientError(f"writing the work copy {target}: {exc.strerror}") from None
    return digest.hexdigest()


def _source_error(what: str, exc: OSError) -> WatcherError:
    """An OS error as the flow understands it: gone, this path's trouble, or the disk's."""
    if isinstance(exc, FileNotFoundError):
        return FileGoneError(f"{what}: no such file or folder")
    if isinstance(exc, FileExistsError):
        return ClaimConflictError(f"{what}: the target already exists")
    if isinstance(exc, _NotAFolderError):
        return SourceRefusedError(
            f"{what}: {exc.strerror}; the daemon never follows links under its folders: make "
            "it a real folder"
        )
    detail = exc.strerror or os.strerror(exc.errno or 0)
    if exc.errno == errno.ELOOP and detail == os.strerror(errno.ELOOP):
        detail = "it is a symbolic link, which the daemon never follows"
    if exc.errno in _DISK_GONE:
        return SourceUnavailableError(f"{what}: {detail}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SourceDeniedError(f"{what}: {detail}")
    return SourceRefusedError(f"{what}: {detail}")  # that path's trouble (ENXIO: a socket...)
