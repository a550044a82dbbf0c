"""Plain data passed between the steps of a file's flow."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ("FileRecord", "FileState", "ImportTask", "Outcome", "RemoteEntry", "escaped")


def escaped(text: str) -> str:
    """``text`` as people may see it: control characters (a newline in a name) escaped."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class FileState(StrEnum):
    """Where a file version is in its flow. The ledger stores these values."""

    claiming = "claiming"  # row written; the rename into processing/ may or may not have happened
    claimed = "claimed"  # the file sits in processing/<id>/; nothing was sent to iSales
    submitting = "submitting"  # uploadFileServer may be in flight: never re-sent blindly
    tracking = "tracking"  # iSales accepted the import; polling its task
    settling = "settling"  # outcome decided; moving to done/ or rejected/ and writing receipts
    done = "done"  # settled in done/
    rejected = "rejected"  # settled in rejected/
    uncertain = "uncertain"  # parked: whether iSales imported it is unknown; an operator decides
    lost = "lost"  # another actor took the file, or it vanished before the claim
    parked = "parked"  # an operator holds it (ledger park): the daemon leaves it alone till unpark

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {FileState.done, FileState.rejected, FileState.uncertain, FileState.lost, FileState.parked}
)


class Outcome(StrEnum):
    """The folder a settled file goes to."""

    done = "done"
    rejected = "rejected"


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One regular file seen in a listing."""

    name: str
    size_bytes: int
    mtime: int


@dataclass(frozen=True, slots=True)
class ImportTask:
    """An iSales data import task, as queryDataImportTask reports it."""

    task_id: str
    status: str  # "0" preparing, "1" running, "2" finished, "3" failed
    succ_num: int | None = None
    repeat_num: int | None = None
    fail_num: int | None = None
    black_num: int | None = None
    err_msg: str = ""
    begin_time: str | None = None
    end_time: str | None = None

    @property
    def is_finished(self) -> bool:
        return self.status in ("2", "3")


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One ledger row: a file version and everything known about it."""

    id: str
    route: str
    campaign_id: str
    inbox: str
    name: str
    size_bytes: int
    mtime: int
    state: FileState
    sha256: str | None
    import_task_id: str | None
    outcome: Outcome | None
    reason: str | None
    details: str | None  # JSON: validation summary, import counts, duplicate-of
    created_at: str
    updated_at: str
    submitted_at: str | None
    settled_path: str | None
    force_submit: int = 0  # an operator asked to send it again (ledger reprocess)
    rows_fingerprint: str | None = None  # the normalised data rows (validation), see duplicates
    data_rows: int | None = None  # data rows validation counted: an adopted task must match
    recheck_at: str | None = None  # an uncertain file is reconciled again at this time
    rechecks: int = 0  # how often it was reconciled again
    forgotten_at: str | None = None  # ledger forget: its content no longer makes a duplicate

    @property
    def shown_name(self) -> str:
        """The name as people may see it: control characters (a newline in a name) escaped."""
        return escaped(self.name)

    @property
    def processing_dir(self) -> str:
        return f"{self.inbox}/processing/{self.id}"

    @property
    def processing_path(self) -> str:
        return f"{self.processing_dir}/{self.name}"
