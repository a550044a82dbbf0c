"""Real SFTP servers on loopback for the tests: OpenSSH sshd, with any subsystem, and ProFTPD.

Users run more than OpenSSH, and servers answer the same request differently. Each server runs
in the foreground on 127.0.0.1 and a free port, with its keys, configuration and logs in a
folder of its own; a client pins its host key through a known_hosts file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import grp
import os
import posixpath
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from watcher.settings import SftpSettings

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PROFTPD = "/usr/sbin/proftpd"
MOD_SFTP = "/usr/lib/proftpd/mod_sftp.so"
GESFTPSERVER = "/usr/libexec/gesftpserver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(path: str, package: str) -> None:
    """Fail (never skip: CI installs it) when a server's file is missing."""
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run .ci/run or apt-get install {package}")


def _keypair(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def _show(logs: tuple[Path, ...]) -> str:
    return "\n".join(f"--- {p} ---\n{p.read_text() if p.exists() else '(none)'}" for p in logs)


def _wait_until_serving(
    what: str, proc: subprocess.Popen[bytes], port: int, logs: tuple[Path, ...]
) -> None:
    """Return once the server greets with its SSH banner; fail with its logs if it never does."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                if s.recv(8) == b"SSH-2.0-":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{_show(logs)}")
        time.sleep(0.01)


@dataclass(frozen=True)
class SftpServer:
    """A running SFTP server, the settings to reach it, and the local folder it serves."""

    name: str
    settings: SftpSettings  # the host key pinned through settings.known_hosts_file
    root: Path  # the local folder the server shows at settings.base_path
    logs: tuple[Path, ...]

    def remote(self, local: Path) -> str:
        """The path a client uses for ``local``, a path below ``root``."""
        return posixpath.join(self.settings.base_path, local.relative_to(self.root).as_posix())

    def log_text(self) -> str:
        return _show(self.logs)


@dataclass
class Sshd:
    """A running OpenSSH server and what a client needs to use it."""

    host: str
    port: int
    username: str
    client_key: Path
    known_hosts: Path
    host_pub: str
    root: Path  # a folder the tests own; routes live below it
    log: Path
    seen_as: str | None = None  # what ``username`` sees ``root`` as, when chrooted

    @property
    def base_path(self) -> str:
        """The path a client uses for ``root``."""
        return self.seen_as or str(self.root)

    def remote(self, local: Path) -> str:
        """The path a client uses for ``local``, a path below ``root``."""
        return posixpath.join(self.base_path, local.relative_to(self.root).as_posix())

    def connect_options(self) -> dict[str, Any]:
        return {"client_keys": [str(self.client_key)], "known_hosts": str(self.known_hosts)}

    def sftp_server(self, name: str) -> SftpServer:
        """This sshd as an :class:`SftpServer`."""
        settings = SftpSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            private_key_file=self.client_key,
            known_hosts_file=self.known_hosts,
            base_path=self.base_path,
            op_timeout_s=10,
        )
        return SftpServer(name, settings, self.root, (self.log,))


@contextmanager
def running_sshd(
    folder: Path,
    subsystem: str = "internal-sftp",
    *,
    authorized_keys: Path | None = None,
    match_blocks: str = "",
    log_level: str = "VERBOSE",
) -> Iterator[Sshd]:
    """OpenSSH sshd on 127.0.0.1:<free port>, key auth, ``subsystem`` serving SFTP.

    Args:
        authorized_keys: where to write the client's key (default: in ``folder``); sshd reads
            it as the login user, so another user's must be somewhere that user can reach.
        match_blocks: ``Match`` blocks for the end of the configuration.
        log_level: sshd's; ``DEBUG3`` with ``internal-sftp -l DEBUG3`` logs every SFTP request.
    """
    require(SSHD, "openssh-server")
    d = folder
    host, client = _keypair(d, "host"), _keypair(d, "client")
    keys = authorized_keys or d / "authorized_keys"
    keys.write_text(client.with_suffix(".pub").read_text())
    os.chmod(keys, 0o644)  # sshd reads it as the login user
    port = free_port()
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host}
PidFile {d}/sshd.pid
AuthorizedKeysFile {keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
MaxStartups 100
MaxSessions 100
Subsystem sftp {subsystem}
LogLevel {log_level}
{match_blocks}""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation
    log_path = d / "sshd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
        try:
            _wait_until_serving("sshd", proc, port, (log_path,))
            host_pub = " ".join(host.with_suffix(".pub").read_text().split()[:2])
            (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
            root = d / "data"
            root.mkdir()
            yield Sshd(
                "127.0.0.1",
                port,
                getpass.getuser(),
                client,
                d / "known_hosts",
                host_pub,
                root,
                log_path,
            )
        finally:
            proc.terminate()
            proc.wait(5)


CHROOT_USER = "isales-ci"
# Every component of a ChrootDirectory must be root's and writable by no one else: not /tmp.
CHROOT_PARENT = Path("/srv/isales-watcher-tests")


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """A system account without a home or a shell, created if missing, that key login accepts."""
    with contextlib.suppress(KeyError):
        return _unlocked(name)
    created = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
    )
    if created.returncode not in (0, 9):  # 9: another run created it meanwhile
        pytest.fail(f"useradd {name} failed: {created.stderr}")
    return _unlocked(name)


def _unlocked(name: str) -> pwd.struct_passwd:
    entry = pwd.getpwnam(name)
    # useradd locks the account ("!"), and sshd without PAM refuses a locked account even for
    # a key; "*" keeps password login impossible.
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    return entry


@contextmanager
def running_chrooted_sshd(folder: Path, user: str = CHROOT_USER) -> Iterator[Sshd]:
    """The OpenSSH sshd of :func:`running_sshd`, where ``user`` (not root) is chrooted.

    ``user`` logs in with the client key into ``/srv/isales-watcher-tests/<unique>/<user>`` and
    sees its ``data`` folder as ``/data``: only sftp, and the kernel's permission checks, which
    root would bypass. ``data`` is root's; the tests give out folders with the owners and modes
    they need. Everything below /srv is removed at the end.
    """
    if os.geteuid() != 0:
        pytest.fail("a chrooted SFTP user needs sshd to run as root")
    account = ensure_system_user(user)
    CHROOT_PARENT.mkdir(mode=0o755, exist_ok=True)
    jail_parent = Path(tempfile.mkdtemp(dir=CHROOT_PARENT))
    try:
        jail_parent.chmod(0o755)  # mkdtemp makes it 0700; the user reads its keys in it
        jail = jail_parent / user
        (jail / "data").mkdir(mode=0o755, parents=True)
        jail.chmod(0o755)
        match = f"""
Match User {user}
    ChrootDirectory {jail_parent}/%u
    ForceCommand internal-sftp
"""
        with running_sshd(
            folder, authorized_keys=jail_parent / "authorized_keys", match_blocks=match
        ) as server:
            yield dataclasses.replace(
                server, username=account.pw_name, root=jail / "data", seen_as="/data"
            )
    finally:
        shutil.rmtree(jail_parent)
        with contextlib.suppress(OSError):
            CHROOT_PARENT.rmdir()  # unless another run still uses it


@contextmanager
def running_proftpd(folder: Path, *, name: str, posix_rename: bool = True) -> Iterator[SftpServer]:
    """ProFTPD with mod_sftp on 127.0.0.1:<free port>, public key login, no FTP.

    As root the session is chrooted (``DefaultRoot``) to the served folder, which clients see
    as ``/``. ``posix_rename=False`` turns off the posix-rename@openssh.com extension, as some
    installations do.
    """
    require(PROFTPD, "proftpd-core")
    require(MOD_SFTP, "proftpd-mod-crypto")
    d = folder
    host, client = _keypair(d, "host"), _keypair(d, "client")
    # Debian's ProFTPD 1.3.8 reads user keys only in the RFC 4716 form.
    rfc4716 = subprocess.run(
        ["ssh-keygen", "-e", "-f", str(client.with_suffix(".pub"))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (d / "authorized_keys.rfc4716").write_text(rfc4716)
    root = d / "data"
    root.mkdir()
    is_root = os.geteuid() == 0
    port = free_port()
    logs = (d / "proftpd.log", d / "sftp.log", d / "trace.log")
    (d / "proftpd.conf").write_text(f"""\
ServerType standalone
ServerName "isales-watcher tests"
Port {port}
DefaultAddress 127.0.0.1
SocketBindTight on
UseIPv6 off
User {getpass.getuser()}
Group {grp.getgrgid(os.getegid()).gr_name}
Umask 022
PidFile {d}/proftpd.pid
ScoreboardFile {d}/proftpd.scoreboard
UseReverseDNS off
WtmpLog off
TransferLog NONE
# Nothing outside this folder: no delay table, no control socket in /run.
DelayEngine off
ControlsEngine off
AuthPAM off
RootLogin on
UseFtpUsers off
RequireValidShell off
# ProFTPD's own default is off; Debian's configuration, like most, turns it on.
AllowOverwrite on
{f"DefaultRoot {root}" if is_root else "# DefaultRoot needs root"}

ModulePath /usr/lib/proftpd
LoadModule mod_sftp.c
SFTPEngine on
SFTPHostKey {host}
SFTPAuthMethods publickey
SFTPAuthorizedUserKeys file:{d}/authorized_keys.rfc4716
{"" if posix_rename else "SFTPExtensions -posixRename"}
SFTPLog {logs[1]}
TraceLog {logs[2]}
Trace sftp:8
""")
    with open(logs[0], "wb") as log:
        # A session of its own: teardown stops the server with the sessions it forked.
        proc = subprocess.Popen(
            [PROFTPD, "-n", "-c", str(d / "proftpd.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_until_serving("proftpd", proc, port, logs)
            host_pub = " ".join(host.with_suffix(".pub").read_text().split()[:2])
            (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
            settings = SftpSettings(
                host="127.0.0.1",
                port=port,
                username=getpass.getuser(),
                private_key_file=client,
                known_hosts_file=d / "known_hosts",
                base_path="/" if is_root else str(root),
                op_timeout_s=10,
            )
            yield SftpServer(name, settings, root, logs)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5)


# --- OpenSSH's own count of SFTP requests ---------------------------------------------------

SFTP_SERVER_BINARY = Path("/usr/lib/openssh/sftp-server")
_REQUEST = re.compile(r"^debug\d: request (\d+): (?!sent)(\S+)")
_QUOTED = re.compile(r'"([^"]*)"')


@dataclass
class Request:
    """One SFTP request as OpenSSH's sftp-server logged it, with the paths it names."""

    op: str
    paths: list[str] = field(default_factory=list)


def requests_of(log: Path) -> list[Request]:
    """Every request of one session (``sftp-server -l DEBUG3`` writes one line per request)."""
    found: list[Request] = []
    for line in log.read_text(errors="replace").splitlines():
        started = _REQUEST.match(line)
        if started:
            found.append(Request(started.group(2)))
        if found:
            found[-1].paths.extend(_QUOTED.findall(line))
    return found


def session_logs(server: Sshd) -> list[Path]:
    """The request logs of a :func:`counting_sshd_at` server, one per SFTP session."""
    return sorted((server.root.parent / "sessions").glob("sftp.*.log"))


@contextmanager
def counting_sshd_at(folder: Path) -> Iterator[Sshd]:
    """An sshd whose SFTP server logs every request, to a file of its own per session."""
    require(str(SFTP_SERVER_BINARY), "openssh-server")
    logs = folder / "sessions"
    logs.mkdir(parents=True)
    wrapper = folder / "sftp-logged"
    server = f"exec {SFTP_SERVER_BINARY} -e -l DEBUG3"
    wrapper.write_text(f'#!/bin/sh\n{server} 2>"{logs}/sftp.$$.log"\n')
    wrapper.chmod(0o755)
    with running_sshd(folder, subsystem=str(wrapper)) as sshd:
        yield sshd
