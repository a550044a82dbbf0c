"""The SQLite ledger: one row per file version, an audit table of transitions. The only SQL here."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watcher.errors import LedgerError
from watcher.models import FileRecord, FileState, Outcome, RemoteEntry

__all__ = ("IMPORTED_STATES", "Ledger", "new_file_id", "utc_now")

# A row in one of these states has (or may have) reached iSales: the same content is a duplicate.
IMPORTED_STATES = (FileState.submitting, FileState.tracking, FileState.uncertain, FileState.done)

_SCHEMA = [
    # version 1
    """
    CREATE TABLE files (
        id             TEXT PRIMARY KEY,
        route          TEXT NOT NULL,
        campaign_id    TEXT NOT NULL,
        inbox          TEXT NOT NULL,
        name           TEXT NOT NULL,
        size_bytes     INTEGER NOT NULL,
        mtime          INTEGER NOT NULL,
        state          TEXT NOT NULL,
        sha256         TEXT,
        import_task_id TEXT,
        outcome        TEXT,
        reason         TEXT,
        details        TEXT,
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL,
        submitted_at   TEXT,
        settled_path   TEXT
    );
    CREATE INDEX files_content ON files (campaign_id, sha256);
    CREATE INDEX files_state ON files (state);
    CREATE TABLE transitions (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        file_id    TEXT NOT NULL REFERENCES files (id),
        from_state TEXT,
        to_state   TEXT NOT NULL,
        at         TEXT NOT NULL,
        actor      TEXT NOT NULL,
        reason     TEXT
    );
    CREATE INDEX transitions_file ON transitions (file_id);
    """,
    # version 2: an operator may send a file again on purpose (ledger reprocess)
    """
    ALTER TABLE files ADD COLUMN force_submit INTEGER NOT NULL DEFAULT 0;
    """,
]

_COLUMNS = (
    "id, route, campaign_id, inbox, name, size_bytes, mtime, state, sha256, import_task_id,"
    " outcome, reason, details, created_at, updated_at, submitted_at, settled_path, force_submit"
)


def utc_now() -> str:
    """The current time as an aware UTC ISO 8601 string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_file_id() -> str:
    """A short, time-sortable id that is safe as a folder name: ``20261123-132501-3fa9c2``."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _record(row: sqlite3.Row) -> FileRecord:
    values = dict(row)
    values["state"] = FileState(values["state"])
    values["outcome"] = Outcome(values["outcome"]) if values["outcome"] else None
    return FileRecord(**values)


class Ledger:
    """Durable state of every file version.

    Every write is committed with ``synchronous=FULL`` before the caller acts on the outside
    world, so a crash at any instant leaves a row that says what may have happened.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(_SCHEMA[version:], start=version + 1):
            self._db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number}; COMMIT;"
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger write failed ({self.path}): {exc}") from exc

    def _log(
        self,
        db: sqlite3.Connection,
        file_id: str,
        from_state: FileState | None,
        to_state: FileState,
        actor: str,
        reason: str | None,
    ) -> None:
        db.execute(
            "INSERT INTO transitions (file_id, from_state, to_state, at, actor, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (file_id, from_state, to_state, utc_now(), actor, reason),
        )

    def insert_claim(
        self, *, route: str, campaign_id: str, inbox: str, entry: RemoteEntry
    ) -> FileRecord:
        """Record the intent to claim a file, before the rename that claims it."""
        file_id, now = new_file_id(), utc_now()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO files (id, route, campaign_id, inbox, name, size_bytes, mtime, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    file_id,
                    route,
                    campaign_id,
                    inbox,
                    entry.name,
                    entry.size_bytes,
                    entry.mtime,
                    FileState.claiming,
                    now,
                    now,
                ),
            )
            self._log(db, file_id, None, FileState.claiming, "daemon", None)
        return self.get(file_id)

    def get(self, file_id: str) -> FileRecord:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise KeyError(file_id)
        return _record(row)

    def find(self, prefix: str) -> list[FileRecord]:
        """Rows whose id starts with ``prefix`` (operators type short ids)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE id LIKE ? ORDER BY rowid", (prefix + "%",)
        )
        return [_record(r) for r in rows]

    def rows(
        self, states: Iterable[FileState] | None = None, limit: int = 1000
    ) -> list[FileRecord]:
        """The newest rows, optionally only those in ``states``."""
        if states is None:
            query = f"SELECT {_COLUMNS} FROM files ORDER BY rowid DESC LIMIT ?"
            args: list[Any] = [limit]
        else:
            wanted = list(states)
            marks = ",".join("?" * len(wanted))
            query = (
                f"SELECT {_COLUMNS} FROM files WHERE state IN ({marks}) ORDER BY rowid DESC LIMIT ?"
            )
            args = [*wanted, limit]
        return [_record(r) for r in self._db.execute(query, args)]

    def unfinished(self) -> list[FileRecord]:
        """Rows the daemon still has to carry forward, oldest first."""
        marks = ",".join("?" * len(_UNFINISHED))
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE state IN ({marks}) ORDER BY rowid", _UNFINISHED
        )
        return [_record(r) for r in rows]

    def transitions(self, file_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT from_state, to_state, at, actor, reason FROM transitions"
            " WHERE file_id = ? ORDER BY seq",
            (file_id,),
        )
        return [dict(r) for r in rows]

    def transition(
        self,
        file_id: str,
        to_state: FileState,
        *,
        expect: FileState | tuple[FileState, ...],
        reason: str | None = None,
        actor: str = "daemon",
        **fields: str | None,
    ) -> FileRecord:
        """Move a row to ``to_state`` if it is still in ``expect``; set ``fields`` with it.

        Raises:
            LedgerError: the row was not in an expected state (a bug, or two daemons on one ledger).
        """
        expected = (expect,) if isinstance(expect, FileState) else expect
        assignments = "".join(f", {name} = ?" for name in fields)
        with self._transaction() as db:
            row = db.execute("SELECT state FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None or FileState(row["state"]) not in expected:
                found = row["state"] if row else "no row"
                raise LedgerError(f"file {file_id}: expected state {expected}, found {found}")
            db.execute(
                f"UPDATE files SET state = ?, updated_at = ?, reason = COALESCE(?, reason)"
                f"{assignments} WHERE id = ?",
                (to_state, utc_now(), reason, *fields.values(), file_id),
            )
            self._log(db, file_id, FileState(row["state"]), to_state, actor, reason)
        return self.get(file_id)

    def update(self, file_id: str, **fields: str | None) -> FileRecord:
        """Set fields without changing the state."""
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._transaction() as db:
            db.execute(
                f"UPDATE files SET {assignments}, updated_at = ? WHERE id = ?",
                (*fields.values(), utc_now(), file_id),
            )
        return self.get(file_id)

    def begin_submit(self, file_id: str) -> FileRecord:
        """Mark a row ``submitting`` unless the same content was already imported for its campaign.

        The check and the write are one transaction, so two copies of a list racing each other
        cannot both reach iSales.

        Returns:
            The row now in ``submitting``, or the earlier row that makes this one a duplicate.
        """
        with self._transaction() as db:
            me = _record(
                db.execute(f"SELECT {_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
            )
            earlier = None if me.force_submit else self._imported_twin(db, me)
            if earlier is not None:
                return earlier
            if me.state is not FileState.claimed:
                raise LedgerError(f"file {file_id}: expected state claimed, found {me.state}")
            now = utc_now()
            db.execute(
                "UPDATE files SET state = ?, submitted_at = ?, updated_at = ? WHERE id = ?",
                (FileState.submitting, now, now, file_id),
            )
            self._log(db, file_id, me.state, FileState.submitting, "daemon", None)
        return self.get(file_id)

    def imported_twin(self, record: FileRecord) -> FileRecord | None:
        """An earlier row with the same campaign and content that reached iSales, if any.

        None for a row an operator asked to send again.
        """
        if record.force_submit:
            return None
        return self._imported_twin(self._db, record)

    def _imported_twin(self, db: sqlite3.Connection, me: FileRecord) -> FileRecord | None:
        marks = ",".join("?" * len(IMPORTED_STATES))
        row = db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE campaign_id = ? AND sha256 = ? AND id != ?"
            f" AND (state IN ({marks}) OR (state = ? AND import_task_id IS NOT NULL"
            f" AND outcome = ?)) ORDER BY rowid LIMIT 1",
            (me.campaign_id, me.sha256, me.id, *IMPORTED_STATES, FileState.settling, Outcome.done),
        ).fetchone()
        return _record(row) if row else None

    def reprocess(self, file_id: str, *, actor: str, reason: str) -> FileRecord:
        """Send a file again, on an operator's word: audited, and past the duplicate check.

        The file must be back in ``processing/<id>/`` (a rejected one is moved there first).

        Raises:
            LedgerError: the row is neither parked as ``uncertain`` nor ``rejected``.
        """
        with self._transaction() as db:
            row = db.execute("SELECT state FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None or row["state"] not in (FileState.uncertain, FileState.rejected):
                found = row["state"] if row else "no such row"
                raise LedgerError(
                    f"file {file_id} is {found}; only a file parked as uncertain or rejected "
                    "can be sent again"
                )
            db.execute(
                "UPDATE files SET state = ?, force_submit = 1, import_task_id = NULL,"
                " outcome = NULL, settled_path = NULL, updated_at = ?, reason = ? WHERE id = ?",
                (FileState.claimed, utc_now(), f"reprocess: {reason}", file_id),
            )
            self._log(
                db,
                file_id,
                FileState(row["state"]),
                FileState.claimed,
                actor,
                f"reprocess: {reason}",
            )
        return self.get(file_id)

    def state_summary(self) -> list[tuple[str, int, str | None]]:
        """(state, files, since when the oldest unfinished one is in it) for every state."""
        rows = self._db.execute(
            "SELECT state, COUNT(*), MIN(updated_at) FROM files GROUP BY state"
        ).fetchall()
        return [
            (state, count, oldest if FileState(state) in _UNFINISHED else None)
            for state, count, oldest in rows
        ]

    def is_writable(self) -> bool:
        """Whether a write transaction can be opened (the disk and the lock are fine)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            return False
        return True

    def task_owner(self, campaign_id: str, task_id: str) -> FileRecord | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE campaign_id = ? AND import_task_id = ?",
            (campaign_id, task_id),
        ).fetchone()
        return _record(row) if row else None


_UNFINISHED = (
    FileState.claiming,
    FileState.claimed,
    FileState.submitting,
    FileState.tracking,
    FileState.settling,
)
