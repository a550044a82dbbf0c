"""Configuration: one TOML file, ``ISALES_WATCHER_*`` environment overrides, secrets from files."""

from __future__ import annotations

import itertools
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from watcher.config_layers import (
    ENV_PREFIX,
    EnvironmentSource,
    FileSource,
    Layers,
    VariableError,
    explain,
)
from watcher.errors import ConfigError
from watcher.language import Language, language_of

__all__ = (
    "DEFAULT_CONFIG",
    "DaemonSettings",
    "IsalesSettings",
    "LocalSettings",
    "RouteSettings",
    "Settings",
    "SftpSettings",
    "ValidationSettings",
    "check_readable",
    "load_settings",
    "read_settings",
)

DEFAULT_CONFIG = Path("/etc/isales-watcher/config.toml")
_SCHEDULE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_CAMPAIGN_SLOT = "{campaign_id}"
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
_UTC_OFFSET = re.compile(r"^(?:UTC)?([+-])([01]\d|2[0-3]):?([0-5]\d)$")
_HOST_HEADER = re.compile(r"^[A-Za-z0-9.-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$")
# The headers the client sends, hence the only ones it can sign. "locale" only when configured.
SIGNABLE_HEADERS = ("content-type", "host", "locale")
# The sources of the Settings being read by read_settings: the file is each command's own.
_SOURCES: ContextVar[tuple[PydanticBaseSettingsSource, ...] | None] = ContextVar(
    "isales_watcher_settings_sources", default=None
)


def parse_utc_offset(text: str) -> timezone:
    """``+08:00``, ``-0530`` or ``UTC+08:00`` as a fixed zone.

    Raises:
        ValueError: not such an offset.
    """
    match = _UTC_OFFSET.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a UTC offset such as +08:00")
    sign = 1 if match.group(1) == "+" else -1
    return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))


def _credentials_directory() -> Path | None:
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(folder) if folder else None


def _resolve_files(values: dict[str, Any]) -> dict[str, Any]:
    """Every ``*_file`` key given as a bare name is a credential in ``$CREDENTIALS_DIRECTORY``.

    systemd sets that variable for ``LoadCredential=``; the container image sets it to
    ``/run/secrets`` (compose secrets, a Kubernetes Secret volume). The same rule holds for
    every ``*_file`` key, so a key, a known_hosts file and a CA file are found the same way.
    """
    resolved = dict(values)
    for key, value in values.items():
        if not key.endswith("_file") or not isinstance(value, str | os.PathLike):
            continue
        path = Path(value)
        if path.is_absolute():
            continue
        folder = _credentials_directory()
        if folder is None:
            raise ValueError(
                f"{key}: {str(path)!r} is a credential name, looked up in "
                "$CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=, and to /run/secrets "
                "in the container image), which is not set; give an absolute path instead"
            )
        resolved[key] = folder / path
    return resolved


def check_readable(key: str, path: Path | None) -> None:
    """A file the daemon reads later must exist and be readable now, by this user."""
    if path is None:
        return
    if not path.is_file():
        raise ValueError(f"{key}: {path} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(
            f"{key}: {path} is not readable by uid {os.geteuid()} (under systemd's "
            "DynamicUser=, load it with LoadCredential= and give its bare name)"
        )


def _read_secret(values: dict[str, Any], key: str) -> None:
    """Fill ``key`` from ``key_file`` (already resolved) when only the file is given."""
    file_key = f"{key}_file"
    source = values.get(file_key)
    if source is None or values.get(key):
        return
    path = Path(source)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{file_key}: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ValueError(f"{file_key}: {path} is empty")
    values[key] = secret


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IsalesSettings(_Section):
    """How to reach and sign requests to the CC-iSales OpenAPI."""

    base_url: str = Field(
        description="The OpenAPI's address, https://host:port (the CC-iSales OpenAPI gateway).",
        examples=["https://10.0.0.5:28443"],
    )
    vdn_id: int = Field(
        ge=1,
        le=9999,
        description="The VDN (tenant) whose campaigns the lists go to.",
        examples=[12],
    )
    access_key: SecretStr = Field(
        description="The OpenAPI access key (AK). Better: access_key_file.", examples=["AK..."]
    )
    secret_key: SecretStr = Field(
        description="The OpenAPI secret key (SK). Better: secret_key_file.", examples=["SK..."]
    )
    access_key_file: Path | None = Field(
        default=None,
        description="A file holding the access key; a bare name is looked up in "
        "$CREDENTIALS_DIRECTORY (systemd LoadCredential=, /run/secrets in the container).",
        examples=["isales_ak"],
    )
    secret_key_file: Path | None = Field(
        default=None,
        description="A file holding the secret key; a bare name is looked up in "
        "$CREDENTIALS_DIRECTORY.",
        examples=["isales_sk"],
    )
    ca_file: Path | None = Field(
        default=None,
        description="A PEM file of the private CA that signed iSales' certificate. TLS is always "
        "verified; without it, the system's CAs are used.",
        examples=["/etc/isales-watcher/isales-ca.pem"],
    )
    tls_fingerprint: str | None = Field(
        default=None,
        description="Pin exactly one server certificate: its SHA-256 as 64 hex digits "
        "(openssl x509 -noout -fingerprint -sha256 -in cert.pem).",
        examples=["3f" * 32],
    )
    server_id: str = Field(
        default="",
        description="The serverId of the SFTP file server as registered in iSales; empty: found "
        "with queryServer by sftp host, port and username (see: isales-watcher servers).",
    )
    allow_insecure_http: bool = Field(
        default=False,
        description="Accept a plain http:// base_url, which sends the signature in clear. Only "
        "for a test bench.",
    )
    signed_headers: tuple[str, ...] = Field(
        default=("host",),
        description='The request headers the C2 signature covers: "host", and optionally '
        '"content-type" and "locale", as the iSales side expects.',
    )
    host_header: str = Field(
        default="",
        description="The Host header sent and signed, when a gateway expects another name than "
        "base_url's; empty: host:port of base_url.",
    )
    locale: str | None = Field(
        default=None,
        description="Ask iSales to answer resultDesc and errMsg in this language (en_US, zh_CN).",
        examples=["en_US"],
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds one OpenAPI call may take, connection included.",
    )
    track_poll_s: float = Field(
        default=10.0, gt=0, description="Seconds between two looks at the running import tasks."
    )
    track_timeout_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="Seconds an import may run before it is looked at with back-off only; raise "
        "it for campaigns that import for longer.",
    )
    reconcile_grace_s: float = Field(
        default=120.0,
        ge=0,
        description="After a lost answer to uploadFileServer, seconds to keep looking for the "
        "import task before the file is parked as uncertain.",
    )
    reconcile_window_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds after our request ended in which an import task may begin and still "
        "be ours.",
    )
    reconcile_by_counts: bool = Field(
        default=True,
        description="Adopt a found task only when its record count equals the data rows "
        "validation counted. Turn off only if iSales counts rows differently.",
    )
    reconcile_horizon_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="Seconds an uncertain file is reconciled again, with back-off, before only an "
        "operator can settle it (isales-watcher ledger resolve).",
    )
    reconcile_recheck_s: float = Field(
        default=30.0,
        gt=0,
        description="The first wait, in seconds, before an uncertain file is reconciled again; it "
        "doubles up to an hour.",
    )
    server_utc_offset: str | None = Field(
        default=None,
        description="The zone of times iSales writes without one (beginTime) and of scheduled "
        "imports; unset: the offset of the server's Date header when it gives one.",
        examples=["+08:00"],
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = _resolve_files(values)
            _read_secret(values, "access_key")
            _read_secret(values, "secret_key")
        return values

    @model_validator(mode="after")
    def _check_url(self) -> Self:
        parts = urlsplit(self.base_url)
        if parts.username is not None or parts.password is not None:
            # Never repeated: what stands before the @ may be a password.
            raise ValueError(
                "base_url: takes no user or password before the host (requests are signed "
                "with access_key and secret_key); give https://host:port"
            )
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"base_url: {self.base_url!r} is not an https://host:port URL")
        if parts.scheme == "http" and not self.allow_insecure_http:
            raise ValueError(
                "base_url: plain http:// sends the signature in clear; use https://, "
                "or set allow_insecure_http = true for a test bench"
            )
        check_readable("ca_file", self.ca_file)
        self._check_headers()
        if self.server_utc_offset is not None:
            try:
                parse_utc_offset(self.server_utc_offset)
            except ValueError as exc:
                raise ValueError(f"server_utc_offset: {exc}") from None
        if self.tls_fingerprint is not None and len(self.certificate_pin or b"") != 32:
            raise ValueError(
                "tls_fingerprint: expected the SHA-256 of the certificate as 64 hex digits "
                "(openssl x509 -noout -fingerprint -sha256 -in cert.pem)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _lower_case_headers(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("signed_headers"), list | tuple):
            values = dict(values)
            names = {str(name).strip().lower() for name in values["signed_headers"]}
            values["signed_headers"] = tuple(sorted(names))
        return values

    def _check_headers(self) -> None:
        sent = set(SIGNABLE_HEADERS) if self.locale else set(SIGNABLE_HEADERS) - {"locale"}
        unknown = sorted(set(self.signed_headers) - sent)
        if unknown:
            raise ValueError(
                f"signed_headers: {', '.join(unknown)} is not sent by the client "
                f"(it sends {', '.join(sorted(sent))})"
            )
        if "host" not in self.signed_headers:
            raise ValueError("signed_headers: must include host (the C2 signature requires it)")
        if self.host_header and not _HOST_HEADER.match(self.host_header):
            raise ValueError(f"host_header: {self.host_header!r} is not host or host:port")
        if self.locale is not None and not re.match(r"^[a-z]{2}_[A-Z]{2}$", self.locale):
            raise ValueError(f"locale: {self.locale!r} is not a locale such as en_US or zh_CN")

    @property
    def server_zone(self) -> timezone | None:
        """The configured zone of the server's zone-less times, if any."""
        if self.server_utc_offset is None:
            return None
        return parse_utc_offset(self.server_utc_offset)

    @property
    def certificate_pin(self) -> bytes | None:
        """The pinned certificate's SHA-256, as bytes."""
        if self.tls_fingerprint is None:
            return None
        digits = self.tls_fingerprint.removeprefix("sha256:").removeprefix("SHA256:")
        try:
            return bytes.fromhex(digits.replace(":", ""))
        except ValueError:
            return b""

    @property
    def sent_host(self) -> str:
        """The ``Host`` value sent and signed: ``host:port``, as iSales expects, unless set."""
        if self.host_header:
            return self.host_header
        parts = urlsplit(self.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"


class SftpSettings(_Section):
    """The SFTP file server that iSales imports from, and that the daemon watches."""

    host: str = Field(
        description="The SFTP server's address, as iSales has it registered.",
        examples=["10.0.0.7"],
    )
    port: int = Field(default=22, ge=1, le=65535, description="The SFTP server's port.")
    username: str = Field(
        description="The account the daemon logs in with: the one iSales fetches files with.",
        examples=["isales"],
    )
    private_key_file: Path | None = Field(
        default=None,
        description="The SSH private key to log in with (or password/password_file); a bare name "
        "is looked up in $CREDENTIALS_DIRECTORY.",
        examples=["sftp_key"],
    )
    password: SecretStr | None = Field(
        default=None, description="The login password. Better: password_file.", examples=["..."]
    )
    password_file: Path | None = Field(
        default=None,
        description="A file holding the login password; a bare name is looked up in "
        "$CREDENTIALS_DIRECTORY.",
        examples=["sftp_password"],
    )
    known_hosts_file: Path | None = Field(
        default=None,
        description="An OpenSSH known_hosts file with the server's host key (ssh-keyscan -p PORT "
        "HOST > FILE); or host_key_fingerprint. An unknown key is refused.",
        examples=["/etc/isales-watcher/known_hosts"],
    )
    host_key_fingerprint: str | None = Field(
        default=None,
        description="The server's host key as SHA256:<43 base64 characters> (ssh-keygen -lf), "
        "instead of known_hosts_file.",
        examples=["SHA256:" + "A" * 43],
    )
    base_path: str = Field(
        default="/",
        description="The server's default path as registered in iSales; every inbox lies below "
        "it, and iSales is told paths relative to it.",
        examples=["/home/sftp"],
    )
    connect_timeout_s: float = Field(
        default=15.0, gt=0, description="Seconds to connect and log in to the SFTP server."
    )
    op_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds one SFTP operation (a listing, a rename, a read) may take before the "
        "connection is dropped and made again.",
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = _resolve_files(values)
            _read_secret(values, "password")
        return values

    @model_validator(mode="after")
    def _check(self) -> Self:
        check_readable("known_hosts_file", self.known_hosts_file)
        if self.host_key_fingerprint is not None and not _FINGERPRINT.match(
            self.host_key_fingerprint
        ):
            raise ValueError(
                "host_key_fingerprint: expected the form SHA256:<43 base64 characters>"
            )
        check_readable("private_key_file", self.private_key_file)
        if not self.base_path.startswith("/"):
            raise ValueError("base_path: must be an absolute path such as /home/sftp")
        return self

    def require_login(self) -> None:
        """The daemon logs in over SFTP: a trusted host key and a credential are required."""
        if self.known_hosts_file is None and self.host_key_fingerprint is None:
            raise ValueError(
                "sftp.known_hosts_file or sftp.host_key_fingerprint is required: the server's "
                "host key must be verified (get it with: ssh-keyscan -p PORT HOST)"
            )
        if self.private_key_file is None and self.password is None:
            raise ValueError("sftp.private_key_file or sftp.password/password_file is required")


class LocalSettings(_Section):
    """Sidecar mode: the daemon sees the file server's disk instead of logging in over SFTP."""

    base_dir: Path = Field(
        description="The local directory that the file server shows as sftp.base_path.",
        examples=["/srv/sftp"],
    )
    force_polling: bool = Field(
        default=False,
        description="List the folders every poll_interval_s only; inotify misses changes on NFS "
        "and SMB volumes, so set it there.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.base_dir.is_dir():
            raise ValueError(f"base_dir: {self.base_dir} is not a directory")
        return self


_CAMPAIGN_FOLDER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _overlap(one: RouteSettings, other: RouteSettings) -> bool:
    """Whether ``one`` watches a folder that ``other`` watches too, or works in."""
    if one.is_template and other.is_template:
        return one.parent == other.parent
    mine = one.parent if one.is_template else one.inbox_path
    if other.is_template:
        # A static inbox that is one of the template's campaign folders, or the parent itself.
        theirs = other.parent
        return mine == theirs or (
            posixpath.dirname(mine) == theirs and is_campaign_folder(posixpath.basename(mine))
        )
    if mine == other.inbox_path:
        return True
    # One route's inbox inside the other's own folders (processing/, done/, rejected/).
    inside = posixpath.relpath(mine, other.inbox_path).split("/")[0]
    return inside in ("processing", "done", "rejected")


def is_campaign_folder(name: str) -> bool:
    """A folder of a template route that names a campaign (its id)."""
    return _CAMPAIGN_FOLDER.match(name) is not None


class RouteSettings(_Section):
    """One drop folder and the campaign its files are imported into."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="A short name for logs, receipts and the ledger (letters, digits, . _ -).",
        examples=["spring-sale"],
    )
    inbox: str = Field(
        description="The drop folder, as the SFTP user sees it. Ending in /{campaign_id}: one "
        "folder per campaign below it, each named by its campaign id.",
        examples=["/home/sftp/inbox/spring-sale"],
    )
    campaign_id: str = Field(
        default="",
        description="The iSales campaign the files are imported into; leave it out when the "
        "inbox ends in /{campaign_id}.",
        examples=["1647000000000000001"],
    )
    pattern: str = Field(
        default="*.xlsx", description="Which file names are lists (a shell pattern)."
    )
    schedule: str | None = Field(
        default=None,
        description="A scheduled import at HH:MM (iSales' time zone) instead of at once.",
        examples=["02:30"],
    )
    call_data_json: bool = Field(
        default=False,
        description="The callData column must be JSON (intelligent-IVR campaigns).",
    )
    duplicate_session_ids_are_errors: bool = Field(
        default=False,
        description="A sessionId on several rows rejects the file (otherwise a warning).",
    )
    duplicate_numbers_are_errors: bool = Field(
        default=False,
        description="The same calledNo on several rows rejects the file (otherwise a warning).",
    )
    duplicates: Literal["rows", "bytes", "off"] = Field(
        default="rows",
        description='What makes a file a duplicate of an earlier import: "rows" (the same data '
        'rows, however re-saved), "bytes" (the same file), "off".',
    )
    receipt_language: Annotated[Language, BeforeValidator(language_of)] = Field(
        default="en",
        description='The language of the .result.txt receipts: "en" or "zh_CN" (also "zh-CN"). '
        "The .result.json receipt keeps English keys and codes.",
    )
    unmatched: Literal["reject", "ignore"] = Field(
        default="reject",
        description="A file in the inbox whose name does not fit `pattern` (and is not a "
        'temporary name): "reject" moves it to rejected/ with a receipt that says what the '
        'inbox takes, once it has stopped changing; "ignore" leaves it where it is. Counted '
        "in isales_watcher_unmatched_files_total either way.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.inbox.startswith("/"):
            raise ValueError(f"inbox: {self.inbox!r} must be an absolute path")
        if self.schedule is not None and not _SCHEDULE.match(self.schedule):
            raise ValueError(f"schedule: {self.schedule!r} is not HH:MM (00:00 to 23:59)")
        if "{" in self.inbox:
            if (
                not self.inbox.rstrip("/").endswith("/" + _CAMPAIGN_SLOT)
                or self.inbox.count("{") > 1
            ):
                raise ValueError(f"inbox: {_CAMPAIGN_SLOT} may only be the last folder of the path")
            if self.campaign_id:
                raise ValueError("campaign_id: leave it out when the inbox names the campaign")
        elif not self.campaign_id:
            raise ValueError("campaign_id: required (or end the inbox in /{campaign_id})")
        return self

    @property
    def is_template(self) -> bool:
        """One inbox per campaign below :attr:`parent`, each named by the campaign id."""
        return "{" in self.inbox

    @property
    def parent(self) -> str:
        """The folder that holds the campaign folders of a template route."""
        return posixpath.dirname(self.inbox.rstrip("/"))

    def for_campaign(self, campaign_id: str) -> RouteSettings:
        """The concrete route of one campaign folder of a template route."""
        return self.model_copy(
            update={
                "name": f"{self.name}/{campaign_id}",
                "inbox": posixpath.join(self.parent, campaign_id),
                "campaign_id": campaign_id,
            }
        )

    @property
    def inbox_path(self) -> str:
        return posixpath.normpath(self.inbox)

    @property
    def hour_minute(self) -> tuple[str, str] | None:
        if self.schedule is None:
            return None
        hour, minute = self.schedule.split(":")
        return str(int(hour)), minute


def _default_state_dir() -> Path:
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/isales-watcher").split(":")[0])


class DaemonSettings(_Section):
    """How the daemon paces itself."""

    source: Literal["sftp", "local"] = Field(
        default="sftp",
        description='"sftp": log in to the file server; "local": see its disk as a sidecar '
        "(then a [local] section is needed).",
    )
    control_listen: str = Field(
        default="127.0.0.1:9187",
        description="host:port of the status page, /healthz, /readyz and /metrics; empty turns "
        "it off.",
    )
    api_probe_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds between calls an idle daemon makes to iSales to know it is still "
        "reachable (readiness).",
    )
    poll_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between two listings of each inbox."
    )
    settle_s: float = Field(
        default=10.0,
        ge=0,
        description="Seconds a file's size and time must stay unchanged before it is taken; raise "
        "it for slow uploaders.",
    )
    incomplete_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds a stable file that is still not a complete workbook may wait before "
        "it is rejected as truncated.",
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Where the SQLite ledger lives; default: systemd's $STATE_DIRECTORY, else "
        "/var/lib/isales-watcher.",
        examples=["/var/lib/isales-watcher"],
    )
    max_parallel_files: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Files worked on at once (checked, submitted, settled).",
    )
    max_claims_per_poll: int = Field(
        default=50,
        ge=1,
        description="Files taken from one inbox in one listing; the rest wait for the next.",
    )
    full_listing_every: int = Field(
        default=12,
        ge=1,
        description="An unchanged inbox costs one stat per poll: its last listing is re-used "
        "while the folder's mtime stays put; it is listed anyway every this many polls (for "
        "servers whose mtime is coarse or never changes).",
    )
    max_in_flight: int = Field(
        default=200,
        ge=1,
        description="Files taken and not yet settled, for the whole daemon; the rest wait, "
        "untouched, in their inboxes.",
    )
    lease_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between two heartbeats of the inbox lease (one daemon per inbox).",
    )
    lease_stale_after: int = Field(
        default=4,
        ge=2,
        description="Heartbeat intervals without a heartbeat after which another daemon takes "
        "an inbox over.",
    )
    shutdown_grace_s: float = Field(
        default=20.0,
        ge=0,
        description="Seconds a stopping daemon lets steps under way finish; the rest resume at "
        "the next start.",
    )
    retry_backoff_s: float = Field(
        default=2.0,
        gt=0,
        description="Seconds before a failed step is tried again; doubles on each failure up to "
        "max_backoff_s.",
    )
    max_backoff_s: float = Field(
        default=300.0,
        gt=0,
        description="The longest wait, in seconds, between two tries of a step, and the most a "
        "Retry-After from iSales is honoured.",
    )
    validation_workers: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Files checked at once, each in processes of its own; one per two CPU cores "
        "is plenty.",
    )


class ValidationSettings(_Section):
    """Bounds that keep a hostile workbook from exhausting the machine."""

    max_unpacked_bytes: int = Field(
        default=2_000_000_000,
        gt=0,
        description="Bytes a workbook may inflate to; more is refused as a ZIP bomb.",
    )
    max_file_bytes: int = Field(
        default=500_000_000,
        gt=0,
        description="Bytes a dropped file may have; checked in the listing and while copying.",
    )
    max_compression_ratio: float = Field(
        default=200.0,
        gt=1,
        description="How many times a part of the workbook may inflate; more is a ZIP bomb.",
    )
    processes_per_file: int = Field(
        default=2,
        ge=1,
        le=2,
        description="A big sheet is checked by this many processes (1 or 2).",
    )
    max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Seconds one file's check may take before its checker is killed and the file "
        "rejected (500,000 rows take about 8 s on two cores).",
    )
    max_memory_mb: int = Field(
        default=2048,
        ge=256,
        description="Memory ceiling of a checker, in MB (500,000 rows need about 210 MB).",
    )


class Settings(BaseSettings):
    """Everything the daemon needs. Build it with :func:`load_settings`.

    pydantic-settings reads it: ``ISALES_WATCHER_<SECTION>__<KEY>`` variables over the TOML file,
    key by key (the sources, and where each value came from, are :mod:`watcher.config_layers`).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    isales: IsalesSettings = Field(description="The CC-iSales OpenAPI.")
    sftp: SftpSettings = Field(description="The SFTP file server iSales imports from.")
    routes: tuple[RouteSettings, ...] = Field(
        min_length=1, description="The drop folders, one [[routes]] table each."
    )
    daemon: DaemonSettings = Field(
        default_factory=DaemonSettings, description="How the daemon paces itself."
    )
    validation: ValidationSettings = Field(
        default_factory=ValidationSettings, description="Limits of a file's check."
    )
    local: LocalSettings | None = Field(
        default=None, description='Sidecar mode (daemon.source = "local") only.'
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # read_settings gives the environment and the command's file; built directly, the
        # environment overrides the arguments. The first source wins, key by key.
        return _SOURCES.get() or (env_settings, init_settings)

    @model_validator(mode="after")
    def _check_source(self) -> Self:
        if self.daemon.source == "local":
            if self.local is None:
                raise ValueError('daemon.source = "local" needs a [local] section with base_dir')
        else:
            self.sftp.require_login()
        return self

    @model_validator(mode="after")
    def _check_routes(self) -> Self:
        names = [route.name for route in self.routes]
        if len(set(names)) != len(names):
            raise ValueError("routes: two routes have the same name")
        for first, second in itertools.combinations(self.routes, 2):
            if _overlap(first, second) or _overlap(second, first):
                raise ValueError(
                    f"routes {first.name} ({first.inbox}) and {second.name} ({second.inbox}) "
                    "would both own one folder; which one took a file would depend on their "
                    "order. Give each route folders of its own"
                )
        base = posixpath.normpath(self.sftp.base_path)
        for route in self.routes:
            if base != "/" and not (
                route.parent if route.is_template else route.inbox_path
            ).startswith(base + "/"):
                raise ValueError(
                    f"routes.{route.name}.inbox: {route.inbox} is outside sftp.base_path {base}; "
                    "iSales can only import files below the server's default path"
                )
        return self

    def route(self, name: str, campaign_id: str) -> RouteSettings | None:
        """The route a ledger row names, template routes expanded; None if it is gone."""
        for route in self.routes:
            if route.name == name and route.campaign_id == campaign_id:
                return route
            if route.is_template and name == f"{route.name}/{campaign_id}":
                return route.for_campaign(campaign_id)
        return None

    def relative_to_base(self, folder: str) -> str:
        """``folder`` as iSales wants ``filePath``: relative to the server's default path."""
        base = posixpath.normpath(self.sftp.base_path)
        relative = posixpath.relpath(posixpath.normpath(folder), base)
        return "/" + relative if relative != "." else ""


def read_settings(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[Settings, Layers]:
    """Read and check the configuration, and where each value came from.

    Args:
        path: the TOML file.
        environ: the variables that override it (default: this process's environment).
        warn: told of each ``ISALES_WATCHER_*`` variable that names no setting.

    Raises:
        ConfigError: one line for each problem, naming the file and line or the variable.
    """
    file = FileSource(Settings, path)
    environment = EnvironmentSource(Settings, os.environ if environ is None else environ)
    for warning in environment.unknown:
        if warn is not None:
            warn(warning)
    sources = _SOURCES.set((environment, file))
    try:
        return Settings(), Layers.of(file, environment)
    except ValidationError as exc:
        raise ConfigError(explain(exc, Layers.of(file, environment), Settings)) from None
    except SettingsError as exc:
        cause = exc.__cause__
        raise ConfigError(str(cause if isinstance(cause, VariableError) else exc)) from None
    finally:
        _SOURCES.reset(sources)


def load_settings(path: Path, *, warn: Callable[[str], None] | None = None) -> Settings:
    """Read and check the configuration (see :func:`read_settings`).

    Raises:
        ConfigError: one line for each problem, naming the file and line or the variable.
    """
    return read_settings(path, warn=warn)[0]
