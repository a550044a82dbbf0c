"""SFTP servers differ: every server's way of saying "that name exists" is a name clash."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.packet import String, UInt32

from watcher.errors import ClaimConflictError, FileGoneError
from watcher.settings import SftpSettings
from watcher.sources.sftp import SftpSource


class _ExistsAsProftpdSays(asyncssh.SFTPError):
    """Status 11, "file already exists", sent even in a version 3 session, as mod_sftp does."""

    def __init__(self) -> None:
        super().__init__(asyncssh.sftp.FX_FILE_ALREADY_EXISTS, "File exists")

    def encode(self, version: int) -> bytes:
        return UInt32(self.code) + String(self.reason) + String(self.lang)


class _ProftpdLike(asyncssh.SFTPServer):
    root = "/"

    def __init__(self, chan: Any) -> None:
        super().__init__(chan, chroot=self.root.encode())

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        if os.path.lexists(self.map_path(newpath)):
            raise _ExistsAsProftpdSays
        super().rename(oldpath, newpath)


@pytest.fixture
async def proftpd_like(tmp_path: Path) -> AsyncIterator[SftpSettings]:
    root = tmp_path / "files"
    root.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key.write_private_key(str(tmp_path / "id"))
    _ProftpdLike.root = str(root)
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
        sftp_factory=_ProftpdLike,
        allow_scp=False,
    )
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "known_hosts").write_text(
        f"[127.0.0.1]:{port} {host_key.export_public_key().decode()}"
    )
    yield SftpSettings(
        host="127.0.0.1",
        port=port,
        username="anyone",
        private_key_file=tmp_path / "id",
        known_hosts_file=tmp_path / "known_hosts",
        base_path="/",
        op_timeout_s=10,
    )
    server.close()
    await server.wait_closed()


async def test_status_11_on_rename_is_a_name_clash_not_a_server_failure(proftpd_like):
    root = Path(_ProftpdLike.root)
    (root / "a.xlsx").write_bytes(b"first")
    (root / "b.xlsx").write_bytes(b"already there")
    source = SftpSource(proftpd_like)
    try:
        with pytest.raises(ClaimConflictError, match="already exists"):
            await source.rename("/a.xlsx", "/b.xlsx")
        assert (root / "b.xlsx").read_bytes() == b"already there"  # nothing overwritten
        await source.rename("/a.xlsx", "/c.xlsx")  # a free name works
        with pytest.raises(FileGoneError):
            await source.rename("/a.xlsx", "/d.xlsx")
    finally:
        await source.close()
