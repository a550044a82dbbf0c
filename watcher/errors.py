"""One error tree, sorted by what the pipeline does next: retry, skip, reject, park or stop."""

from __future__ import annotations

__all__ = (
    "ApiAmbiguousError",
    "ApiRejectedError",
    "ApiReplyError",
    "ApiTrustError",
    "ApiUnavailableError",
    "CheckerUnavailableError",
    "ClaimConflictError",
    "ConfigError",
    "FileGoneError",
    "HostKeyError",
    "LedgerBusyError",
    "LedgerError",
    "RejectFileError",
    "SignatureRefusedError",
    "SkipFileError",
    "SourceDeniedError",
    "SourceRefusedError",
    "SourceUnavailableError",
    "StateChangedError",
    "TaskTakenError",
    "TransientError",
    "WatcherError",
    "WorkbookRejected",
)


class WatcherError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(WatcherError):
    """The configuration is unusable; the CLI exits 78 (EX_CONFIG)."""


class TransientError(WatcherError):
    """Nothing happened; the same step may be tried again later."""


class SourceUnavailableError(TransientError):
    """The file server cannot be reached right now (connect, login, lost connection, deadline)."""


class SourceRefusedError(TransientError):
    """The file server is reachable but refused one operation (permission, not a folder...).

    That path's trouble, not the server's: the other inboxes and files go on.
    """


class SourceDeniedError(SourceRefusedError):
    """The server said "permission denied" for this path: it will not change by waiting."""


class HostKeyError(SourceUnavailableError):
    """The file server presented a host key we do not trust: we refuse to talk to it."""


class CheckerUnavailableError(TransientError):
    """No validation worker can be started (fork failed, forkserver gone): the file waits."""


class ApiUnavailableError(TransientError):
    """iSales provably did not act on the request (refused connection, 429, 503, 0200022)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SignatureRefusedError(TransientError):
    """HTTP 401: iSales refused the AK/SK signature (wrong keys or a skewed clock).

    The request had no effect, but retrying at once will not help: an operator must act.
    """


class ApiTrustError(TransientError):
    """The TLS certificate of iSales cannot be verified: nothing was sent, an operator must act."""


class ApiAmbiguousError(WatcherError):
    """The request may or may not have taken effect (timeout after sending, 5xx, broken body)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ApiReplyError(ApiAmbiguousError):
    """A reply of an unexpected shape: the request may have taken effect; the reply is unusable."""


class SkipFileError(WatcherError):
    """An expected race: another actor moved the file first. Nothing to do."""


class FileGoneError(SkipFileError):
    """The file vanished before we could act on it."""


class ClaimConflictError(SkipFileError):
    """The rename target already exists: somebody else claimed the file."""


class RejectFileError(WatcherError):
    """The file can never succeed as it is: settle it in rejected/ with a receipt."""


class WorkbookRejected(RejectFileError):  # noqa: N818 - a verdict, not a failure of ours
    """The file is not a workbook we may read. ``kind`` names the problem for the report."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class ApiRejectedError(RejectFileError):
    """iSales answered with a business error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} (iSales code {code})")
        self.code = code


class TaskTakenError(WatcherError):
    """An import task already belongs to another file version: it cannot be adopted."""


class LedgerError(WatcherError):
    """The ledger cannot be written: stop intake and exit non-zero."""


class StateChangedError(LedgerError):
    """A row was not in the state the writer expected: another actor moved it meanwhile.

    When that actor is an operator (``ledger park``...), their word wins and the daemon drops
    its work on the file; otherwise it is a bug, and the daemon stops as for any ledger error.
    """

    def __init__(self, file_id: str, message: str) -> None:
        super().__init__(f"file {file_id}: {message}")
        self.file_id = file_id


class LedgerBusyError(LedgerError):
    """Another process held the ledger for longer than the busy timeout: try again shortly."""
