"""The SFTP source: asyncssh, host keys verified (fail closed), a deadline on every operation."""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncssh
import structlog

from watcher.errors import (
    ClaimConflictError,
    FileGoneError,
    HostKeyError,
    SourceDeniedError,
    SourceRefusedError,
    SourceUnavailableError,
    TransientError,
    WorkbookRejected,
)
from watcher.models import RemoteEntry
from watcher.settings import SftpSettings
from watcher.sources import OWN_FOLDERS, OddNames, too_large

__all__ = ("SftpSource",)

log = structlog.get_logger(__name__)

# A read of this many bytes goes out as parallel requests of the server's largest read length
# (asyncssh pipelines it), so a big file costs one round trip per chunk, not per 32 KB.
_CHUNK_BYTES = 8 * 1024 * 1024
_EOF_PROBE_BYTES = 64 * 1024  # one request (under any read limit): the end, or what was added
# Errors after which the session is useless: the next operation connects afresh.
_CONNECTION_GONE = (
    asyncssh.SFTPConnectionLost,
    asyncssh.SFTPNoConnection,
    asyncssh.DisconnectError,
    asyncssh.ConnectionLost,
    ConnectionError,
)


async def _refuse_link(sftp: asyncssh.SFTPClient, path: str, *, claimed: bool = False) -> int:
    """The server follows symbolic links; we never do: only a regular file is read.

    Returns the file's size (0 when it is missing: the read itself says what that means).
    A rename needs no such check: it moves a name, and never follows one. So a link or a folder
    swapped in for a file just before its claim is claimed as it is: a ``claimed`` one is
    rejected (a receipt says why) rather than refused again and again.
    """
    try:
        attrs = await sftp.lstat(path)
    except asyncssh.SFTPNoSuchFile:
        return 0
    if attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
        return attrs.size or 0
    what = {
        asyncssh.FILEXFER_TYPE_SYMLINK: "a symbolic link",
        asyncssh.FILEXFER_TYPE_DIRECTORY: "a folder",
    }.get(attrs.type, "not a regular file")
    if claimed:
        raise WorkbookRejected(
            "not_xlsx",
            f"the file is {what}, which this service never opens; drop the workbook itself",
        )
    raise SourceRefusedError(f"{path} is {what}, which the daemon never follows or reads")


class _HostKeyCheck(asyncssh.SSHClient):
    """Remembers the key the server presented, and accepts it only if it matches the pin."""

    def __init__(self, pin: str | None) -> None:
        self.pin = pin
        self.presented: str | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.presented = key.get_fingerprint("sha256")
        return self.pin is not None and self.presented == self.pin


class SftpSource:
    """One SFTP connection, opened on first use and re-opened after a failure."""

    def __init__(self, settings: SftpSettings) -> None:
        self._settings = settings
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._odd = OddNames()
        # Folders known to exist: made or seen once, not asked again until an error says a
        # path is missing (then all are forgotten, and made afresh on the next try).
        self._folders: set[str] = set()

    @property
    def address(self) -> str:
        return f"{self._settings.host}:{self._settings.port}"

    async def connect(self) -> asyncssh.SFTPClient:
        """The SFTP session, connecting first when needed.

        Raises:
            HostKeyError: the server's host key is not the one we trust.
            SourceUnavailableError: anything else that prevents a session.
        """
        async with self._lock:
            if self._sftp is not None and self._conn is not None and not self._conn.is_closed():
                return self._sftp
            self._drop()
            settings = self._settings
            check = _HostKeyCheck(settings.host_key_fingerprint)
            options: dict[str, Any] = {
                "username": settings.username,
                "known_hosts": (
                    str(settings.known_hosts_file) if settings.known_hosts_file else ([], [], [])
                ),
                "client_keys": [str(settings.private_key_file)]
                if settings.private_key_file
                else (),
                "password": settings.password.get_secret_value() if settings.password else None,
                "connect_timeout": settings.connect_timeout_s,
                "login_timeout": settings.connect_timeout_s,
                "keepalive_interval": 15,
                "keepalive_count_max": 3,
                "agent_path": None,
                "config": (),
            }
            try:
                async with asyncio.timeout(settings.connect_timeout_s * 2):
                    conn = await asyncssh.connect(
                        settings.host, settings.port, client_factory=lambda: check, **options
                    )
                    sftp = await conn.start_sftp_client()
            except asyncssh.HostKeyNotVerifiable:
                trusted = (
                    settings.known_hosts_file
                    or f"host_key_fingerprint {settings.host_key_fingerprint}"
                )
                raise HostKeyError(
                    f"refusing to connect to {self.address}: its host key {check.presented} is "
                    f"not trusted by {trusted}; if the server's key changed on purpose, add the "
                    "new key "
                    f"(ssh-keyscan -p {settings.port} {settings.host})"
                ) from None
            except asyncssh.PermissionDenied:
                raise SourceUnavailableError(
                    f"SFTP login to {self.address} as {settings.username} was refused: check the "
                    "key or password"
                ) from None
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                raise SourceUnavailableError(
                    f"cannot reach the SFTP server {self.address}: {exc or type(exc).__name__}"
                ) from None
            self._conn, self._sftp = conn, sftp
            log.info("sftp.connected", server=self.address)
            return sftp

    def change_event(self, folders: Sequence[str]) -> asyncio.Event | None:
        return None  # SFTP has no notifications: the poll interval decides

    def stalled_s(self) -> float:
        return 0.0  # every SFTP call is a coroutine that its deadline cancels

    async def close(self) -> None:
        async with self._lock:
            self._drop()

    def _drop(self) -> None:
        self._folders.clear()  # a server back after an outage may be on a fresh volume
        if self._sftp is not None:
            self._sftp.exit()
        if self._conn is not None:
            self._conn.close()
        self._conn = self._sftp = None

    @asynccontextmanager
    async def _session(self, what: str) -> AsyncIterator[asyncssh.SFTPClient]:
        sftp = await self.connect()
        try:
            async with asyncio.timeout(self._settings.op_timeout_s):
                yield sftp
        except asyncssh.SFTPNoSuchFile:
            self._folders.clear()
            raise FileGoneError(f"{what}: no such file") from None
        except _CONNECTION_GONE as exc:
            self._drop()
            raise SourceUnavailableError(f"{what}: connection lost ({exc})") from None
        except TimeoutError:
            self._drop()
            raise SourceUnavailableError(
                f"{what}: no answer within {self._settings.op_timeout_s:g} s"
            ) from None
        except asyncssh.SFTPPermissionDenied as exc:
            raise SourceDeniedError(f"{what}: {exc.reason} (SFTP code {exc.code})") from None
        except asyncssh.SFTPError as exc:
            # The session is alive and answered: this path, not the server, is the trouble.
            self._folders.clear()
            raise SourceRefusedError(f"{what}: {exc.reason} (SFTP code {exc.code})") from None

    async def _listing(self, folder: str) -> list[asyncssh.SFTPName]:
        async with self._session(f"listing {folder}") as sftp:
            try:
                # Names as bytes: one name that is not UTF-8 must not fail the whole listing.
                return [item async for item in sftp.scandir(folder.encode())]
            except asyncssh.SFTPNoSuchFile:
                await self._make_folder(sftp, folder)
                return []

    async def list_files(self, folder: str) -> list[RemoteEntry]:
        entries = []
        for item in await self._listing(folder):
            if item.attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
                continue  # links (the listing does not follow them), folders, devices
            name = self._odd.usable(folder, item.filename)
            if name is not None:
                entries.append(RemoteEntry(name, item.attrs.size or 0, int(item.attrs.mtime or 0)))
        return entries

    async def list_folders(self, folder: str) -> list[str]:
        names = []
        for item in await self._listing(folder):
            if item.attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
                continue
            name = self._odd.usable(folder, item.filename)
            if name is not None and name not in (".", ".."):
                names.append(name)
        return names

    async def folder_mtime(self, folder: str) -> int | None:
        async with self._session(f"looking at {folder}") as sftp:
            attrs = await sftp.stat(folder)
            if attrs.mtime_ns is not None:
                return int(attrs.mtime_ns)
            return None if attrs.mtime is None else int(attrs.mtime)

    async def read_ends(
        self, path: str, size_bytes: int, head_bytes: int, tail_bytes: int
    ) -> tuple[bytes, bytes]:
        async with self._session(f"reading {path}") as sftp, sftp.open(path, "rb") as remote:
            tail_at = max(0, size_bytes - tail_bytes)
            if tail_at <= head_bytes:  # one read holds both ends
                whole: bytes = await remote.read(size_bytes, 0)
                return whole[:head_bytes], whole[len(whole) - min(len(whole), tail_bytes) :]
            # Both reads in flight at once: one round trip.
            head: bytes
            tail: bytes
            head, tail = await asyncio.gather(
                remote.read(head_bytes, 0), remote.read(tail_bytes, tail_at)
            )
            return head, tail

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        async with self._session(f"reading {path}") as sftp:
            await _refuse_link(sftp, path)
            async with sftp.open(path, "rb") as remote:
                data: bytes = await remote.read(max_bytes, 0)
                return data

    async def makedirs(self, path: str) -> None:
        if path in self._folders:
            return
        async with self._session(f"creating {path}") as sftp:
            await self._make_folder(sftp, path)

    async def _make_folder(self, sftp: asyncssh.SFTPClient, path: str) -> None:
        """Make ``path`` and any missing parents, from the deepest up: one request when only the
        last is missing (asyncssh's makedirs asks twice for every folder from the root)."""
        try:
            await sftp.mkdir(path)
        except asyncssh.SFTPNoSuchFile:
            parent = posixpath.dirname(path.rstrip("/"))
            if parent in ("", "/", path):
                raise
            await self._make_folder(sftp, parent)
            await sftp.mkdir(path)
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
            # OpenSSH says "failure" for a name that exists: a folder is what we wanted. The
            # daemon's own folders must be folders, not links: files moved through a link would
            # land wherever it points (an inbox given through a link is the operator's choice).
            attrs = await sftp.lstat(path)
            if attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK and (
                posixpath.basename(path) in OWN_FOLDERS
            ):
                raise asyncssh.SFTPNotADirectory(
                    f"{path} is a symbolic link; the daemon moves and writes files only in real "
                    "folders: remove the link"
                ) from None
            if not await sftp.isdir(path):
                raise asyncssh.SFTPNotADirectory(f"{path} is not a directory") from None
        self._folders.add(path)

    async def exists(self, path: str) -> bool:
        async with self._session(f"checking {path}") as sftp:
            return bool(await sftp.exists(path))

    async def rename(self, source: str, target: str) -> None:
        # A plain SFTP rename fails when the target exists; that failure is the lost race.
        async with self._session(f"renaming {source}") as sftp:
            try:
                await sftp.rename(source, target)
            except asyncssh.SFTPFileAlreadyExists:
                # ProFTPD's mod_sftp says so with status 11 even in a version 3 session.
                raise ClaimConflictError(f"{target} already exists") from None
            except (asyncssh.SFTPFailure, asyncssh.SFTPNoSuchFile) as exc:
                # OpenSSH answers a plain "failure": look at what is there to tell which it was.
                self._folders.clear()  # the target's folder may be the missing part
                if await sftp.exists(target):
                    raise ClaimConflictError(f"{target} already exists") from None
                if not await sftp.exists(source):
                    raise FileGoneError(f"{source} vanished") from None
                raise SourceRefusedError(f"renaming {source}: {exc.reason}") from None

    async def download(self, path: str, local: Path, max_bytes: int | None = None) -> str:
        digest = hashlib.sha256()
        size = 0
        sftp = await self.connect()
        deadline_s = self._settings.op_timeout_s
        try:
            async with asyncio.timeout(deadline_s):
                expected = await _refuse_link(sftp, path, claimed=True)
                remote = await sftp.open(path, "rb")
            async with remote:
                with _work_copy(local) as out:
                    while True:
                        # As much as the file holds, then one request that finds its end.
                        left = expected - size
                        want = min(_CHUNK_BYTES, left) if left > 0 else _EOF_PROBE_BYTES
                        # A deadline per chunk: a big file may take long, a stalled one may not.
                        async with asyncio.timeout(deadline_s):
                            chunk: bytes = await remote.read(want)
                        if not chunk:
                            break
                        size += len(chunk)
                        if max_bytes is not None and size > max_bytes:
                            raise too_large(path, max_bytes)
                        digest.update(chunk)
                        out(chunk)
        except asyncssh.SFTPNoSuchFile:
            raise FileGoneError(f"downloading {path}: no such file") from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            if isinstance(exc, asyncssh.SFTPPermissionDenied):
                # Said plainly: this file may not be read, and waiting will not change that.
                raise SourceDeniedError(
                    f"downloading {path}: {exc.reason} (SFTP code {exc.code})"
                ) from None
            if isinstance(exc, asyncssh.SFTPError) and not isinstance(exc, _CONNECTION_GONE):
                # "Failure" (code 4) is how OpenSSH reports EIO or ESTALE on its own disk: the
                # session lives on, and the file is tried again later.
                raise SourceUnavailableError(
                    f"downloading {path}: {exc.reason} (SFTP code {exc.code})"
                ) from None
            self._drop()
            raise SourceUnavailableError(f"downloading {path}: {exc!r}") from None
        return digest.hexdigest()

    async def write_file(self, path: str, data: bytes) -> None:
        folder = posixpath.dirname(path)
        # A short, fixed-length dotfile name: never too long, and never taken for a drop.
        temporary = posixpath.join(folder, f".isales-watcher-{secrets.token_hex(8)}.tmp")
        async with self._session(f"writing {path}") as sftp:
            async with sftp.open(temporary, "wb") as remote:
                await remote.write(data)
            try:
                await sftp.posix_rename(temporary, path)
            except asyncssh.SFTPOpUnsupported:
                if await sftp.exists(path):
                    await sftp.remove(path)
                await sftp.rename(temporary, path)

    async def remove_file(self, path: str) -> None:
        async with self._session(f"removing {path}") as sftp:
            await sftp.remove(path)

    async def remove_dir(self, path: str) -> None:
        # Made again when asked for; and each claim's processing/<id>/ is not kept for ever.
        self._folders.discard(path)
        async with self._session(f"removing {path}") as sftp:
            try:
                await sftp.rmdir(path)
            except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPFailure):
                return  # gone already, or not empty: leave it


@contextmanager
def _work_copy(local: Path) -> Iterator[Callable[[bytes], None]]:
    """A writer of the local copy whose failures (a full disk) are ours, not the server's."""
    try:
        out = local.open("wb")
    except OSError as exc:
        raise TransientError(f"creating the work copy {local}: {exc.strerror}") from None
    with out:

        def write(chunk: bytes) -> None:
            try:
                out.write(chunk)
            except OSError as exc:
                raise TransientError(f"writing the work copy {local}: {exc.strerror}") from None

        yield write
