"""The SQLite ledger: one row per file version, an audit table of transitions. The only SQL here."""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from watcher.errors import (
    ConfigError,
    LedgerBusyError,
    LedgerError,
    StateChangedError,
    TaskTakenError,
)
from watcher.models import FileRecord, FileState, Outcome, RemoteEntry

__all__ = (
    "IMPORTED_STATES",
    "PARKABLE_STATES",
    "DuplicatesBy",
    "Ledger",
    "StateLock",
    "new_file_id",
    "utc_now",
)

DuplicatesBy = Literal["rows", "bytes", "off"]
_BUSY_TIMEOUT_MS = 5000  # how long a writer waits for another (the daemon, a command)
Field = str | int | None

# A row in one of these states has (or may have) reached iSales: the same content is a duplicate.
IMPORTED_STATES = (FileState.submitting, FileState.tracking, FileState.uncertain, FileState.done)
# An operator may hold a file (ledger park) only where nothing is in the air: nothing sent yet
# (claimed), an import iSales acknowledged (tracking), or one parked as uncertain already. Never
# while its upload may be under way (submitting: it must be reconciled) or while it is being
# claimed or moved to done/ or rejected/ (it is finished in a moment).
PARKABLE_STATES = (FileState.claimed, FileState.tracking, FileState.uncertain)
_FORGETTABLE = (FileState.done, FileState.rejected)
# The state a parked row was parked from (a correlated subquery on ``files``): a file parked
# after it was sent still counts as sent, for the duplicate check and for reconciliation.
_PARKED_FROM = (
    "(SELECT from_state FROM transitions WHERE transitions.file_id = files.id"
    " AND to_state = 'parked' ORDER BY seq DESC LIMIT 1)"
)

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
    # version 3: the same list is the same rows; a task once owned stays owned; uncertain files
    # are reconciled again on a schedule
    """
    ALTER TABLE files ADD COLUMN rows_fingerprint TEXT;
    ALTER TABLE files ADD COLUMN data_rows INTEGER;
    ALTER TABLE files ADD COLUMN recheck_at TEXT;
    ALTER TABLE files ADD COLUMN rechecks INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX files_rows ON files (campaign_id, rows_fingerprint);
    CREATE INDEX files_recheck ON files (recheck_at) WHERE recheck_at IS NOT NULL;
    CREATE TABLE owned_tasks (
        campaign_id TEXT NOT NULL,
        task_id     TEXT NOT NULL,
        file_id     TEXT NOT NULL REFERENCES files (id),
        at          TEXT NOT NULL,
        PRIMARY KEY (campaign_id, task_id)
    );
    INSERT OR IGNORE INTO owned_tasks (campaign_id, task_id, file_id, at)
        SELECT campaign_id, import_task_id, id, updated_at FROM files
        WHERE import_task_id IS NOT NULL;
    """,
    # version 4: files recorded before version 3 get their row counts and are looked at again
    """
    UPDATE files SET data_rows = json_extract(details, '$.validation.data_rows')
        WHERE data_rows IS NULL AND details IS NOT NULL AND json_valid(details);
    UPDATE files SET recheck_at = '1970-01-01T00:00:00.000+00:00'
        WHERE state = 'uncertain' AND recheck_at IS NULL AND submitted_at IS NOT NULL;
    """,
    # version 5: an operator may forget a file, whose content then no longer makes a duplicate;
    # the status page lists the files that changed last
    """
    ALTER TABLE files ADD COLUMN forgotten_at TEXT;
    CREATE INDEX files_updated ON files (updated_at);
    """,
]

_COLUMNS = (
    "id, route, campaign_id, inbox, name, size_bytes, mtime, state, sha256, import_task_id,"
    " outcome, reason, details, created_at, updated_at, submitted_at, settled_path, force_submit,"
    " rows_fingerprint, data_rows, recheck_at, rechecks, forgotten_at"
)


class StateLock:
    """One daemon per state directory: an exclusive ``flock`` held for the daemon's life.

    The lock file names the holder, so that a second daemon can say who it found. The kernel
    drops the lock when the holder dies, however it dies: there is no stale lock to clear.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        except OSError as exc:
            raise LedgerError(f"cannot open the lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise ConfigError(
                f"daemon.state_dir: another isales-watcher already runs on {state_dir} "
                f"({holder}); one daemon per ledger"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor drops the lock


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

    def __init__(self, path: Path, *, busy_timeout_ms: int = _BUSY_TIMEOUT_MS) -> None:
        """Open (and create or migrate) the ledger.

        ``busy_timeout_ms``: how long a write waits for another process's; SQLite waits in the
        calling thread, so the daemon, whose event loop that is, waits less than a command.
        """
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            # First: a command opened beside a busy daemon waits for its turn, even here.
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def verify(self) -> None:
        """Check the file at start (``PRAGMA quick_check``): never run without a sound record.

        Raises:
            LedgerError: the ledger is damaged, with what SQLite found and what to do.
        """
        try:
            found = [row[0] for row in self._db.execute("PRAGMA quick_check(5)")]
        except sqlite3.Error as exc:
            found = [str(exc)]
        if found != ["ok"]:
            raise LedgerError(
                f"the ledger {self.path} is damaged ({'; '.join(found)[:300]}); stop here, keep "
                "a copy of the file, and restore it from a backup or recover it with "
                "'sqlite3 ledger.sqlite3 .recover'"
            )

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
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise LedgerBusyError(
                    f"the ledger {self.path} is busy (another process held it for "
                    f"{self._busy_timeout_ms / 1000:g} s); try again in a moment"
                ) from exc
            raise LedgerError(f"ledger write failed ({self.path}): {exc}") from exc
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
        """Rows whose id starts with ``prefix`` (operators type short ids); taken as text, never
        as a pattern (``%`` or ``_``), and an empty one matches nothing."""
        if not prefix:
            return []
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE substr(id, 1, ?) = ? ORDER BY rowid",
            (len(prefix), prefix.lower()),  # ids are lower case; people may type upper
        )
        return [_record(r) for r in rows]

    def search(
        self,
        *,
        route: str | None = None,
        states: Iterable[FileState] = (),
        since: str | None = None,
        until: str | None = None,
        name: str | None = None,
        limit: int = 1000,
    ) -> list[FileRecord]:
        """The newest rows that match every filter given (times are ISO 8601, UTC; ``name`` is
        a shell pattern such as ``*2026-03*.xlsx``)."""
        where, args = ["1"], []
        wanted = list(states)
        for clause, value in (
            ("route = ?", route),
            ("created_at >= ?", since),
            ("created_at < ?", until),
            ("name GLOB ?", name),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        if wanted:
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            args.extend(wanted)
        query = f"SELECT {_COLUMNS} FROM files WHERE {' AND '.join(where)} ORDER BY rowid DESC"
        return [_record(r) for r in self._db.execute(query + " LIMIT ?", [*args, limit])]

    def lookup(self, key: str) -> list[FileRecord]:
        """Rows an operator may mean by ``key``: an id or its start, a file name, or a SHA-256
        or its start (at least 8 hex digits)."""
        found = self.find(key)
        if found:
            return found
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE name = ? ORDER BY rowid", (key,)
        ).fetchall()
        if not rows and len(key) >= 8 and all(c in "0123456789abcdef" for c in key.lower()):
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM files WHERE sha256 LIKE ? ORDER BY rowid",
                (key.lower() + "%",),
            ).fetchall()
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

    def in_hand(self) -> dict[str, int]:
        """Files claimed and not settled, by inbox; not the scheduled imports that iSales holds
        until their hour (they cost a query now and then, and may wait for hours)."""
        marks = ",".join("?" * len(_UNFINISHED))
        rows = self._db.execute(
            f"SELECT inbox, count(*) FROM files WHERE state IN ({marks}) AND NOT ("
            "state = 'tracking' AND json_extract(details, '$.schedule') IS NOT NULL"
            ") GROUP BY inbox",
            _UNFINISHED,
        )
        return {inbox: int(count) for inbox, count in rows}

    def has_been(self, file_id: str, state: FileState) -> bool:
        """Whether the row was ever in ``state``."""
        row = self._db.execute(
            "SELECT 1 FROM transitions WHERE file_id = ? AND to_state = ? LIMIT 1",
            (file_id, state),
        ).fetchone()
        return row is not None

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
        **fields: Field,
    ) -> FileRecord:
        """Move a row to ``to_state`` if it is still in ``expect``; set ``fields`` with it.

        Setting ``import_task_id`` also records the task as owned by this row, for good.

        Raises:
            StateChangedError: the row was not in an expected state (an operator moved it, or a
                bug).
            TaskTakenError: another row owns (or once owned) that import task.
        """
        expected = (expect,) if isinstance(expect, FileState) else expect
        assignments = "".join(f", {name} = ?" for name in fields)
        with self._transaction() as db:
            row = db.execute("SELECT state FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None or FileState(row["state"]) not in expected:
                found = row["state"] if row else "no row"
                raise StateChangedError(file_id, f"expected state {expected}, found {found}")
            task_id = fields.get("import_task_id")
            if isinstance(task_id, str):
                self._own(db, file_id, task_id)
            db.execute(
                f"UPDATE files SET state = ?, updated_at = ?, reason = COALESCE(?, reason)"
                f"{assignments} WHERE id = ?",
                (to_state, utc_now(), reason, *fields.values(), file_id),
            )
            self._log(db, file_id, FileState(row["state"]), to_state, actor, reason)
        return self.get(file_id)

    def _own(self, db: sqlite3.Connection, file_id: str, task_id: str) -> None:
        (campaign_id,) = db.execute(
            "SELECT campaign_id FROM files WHERE id = ?", (file_id,)
        ).fetchone()
        owner = db.execute(
            "SELECT file_id FROM owned_tasks WHERE campaign_id = ? AND task_id = ?",
            (campaign_id, task_id),
        ).fetchone()
        if owner is not None and owner["file_id"] != file_id:
            raise TaskTakenError(
                f"import task {task_id} of campaign {campaign_id} belongs to file "
                f"{owner['file_id']}"
            )
        db.execute(
            "INSERT OR IGNORE INTO owned_tasks (campaign_id, task_id, file_id, at)"
            " VALUES (?, ?, ?, ?)",
            (campaign_id, task_id, file_id, utc_now()),
        )

    def update(
        self, file_id: str, *, expect: FileState | None = None, **fields: Field
    ) -> FileRecord:
        """Set fields without changing the state; with ``expect``, only in that state.

        Raises:
            StateChangedError: the row is not in ``expect`` (another actor moved it meanwhile).
        """
        assignments = ", ".join(f"{name} = ?" for name in fields)
        guard, args = ("", []) if expect is None else (" AND state = ?", [expect])
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE files SET {assignments}, updated_at = ? WHERE id = ?{guard}",
                (*fields.values(), utc_now(), file_id, *args),
            ).rowcount
            if expect is not None and changed == 0:
                raise StateChangedError(file_id, f"expected state {expect}, it moved on")
        return self.get(file_id)

    def begin_submit(
        self,
        file_id: str,
        duplicates: DuplicatesBy = "rows",
        *,
        details: Callable[[FileRecord, str], str | None] | None = None,
    ) -> FileRecord:
        """Mark a row ``submitting`` unless the same content was already imported for its campaign.

        The check and the write are one transaction, so two copies of a list racing each other
        cannot both reach iSales. ``details(row, submitted_at)`` gives the row's details for
        this submission, written in the same transaction: no crash can leave a new submission
        with an old one's evidence.

        Returns:
            The row now in ``submitting``, or the earlier row that makes this one a duplicate.
        """
        with self._transaction() as db:
            me = _record(
                db.execute(f"SELECT {_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
            )
            earlier = None if me.force_submit else self._imported_twin(db, me, duplicates)
            if earlier is not None:
                return earlier
            if me.state is not FileState.claimed:
                raise StateChangedError(file_id, f"expected state claimed, found {me.state}")
            now = utc_now()
            fresh = me.details if details is None else details(me, now)
            # A forgotten file sent again on purpose: its content counts as imported once more.
            db.execute(
                "UPDATE files SET state = ?, submitted_at = ?, updated_at = ?, details = ?,"
                " forgotten_at = NULL WHERE id = ?",
                (FileState.submitting, now, now, fresh, file_id),
            )
            self._log(db, file_id, me.state, FileState.submitting, "daemon", None)
        return self.get(file_id)

    def imported_twin(
        self, record: FileRecord, duplicates: DuplicatesBy = "rows"
    ) -> FileRecord | None:
        """An earlier row of the same campaign with the same list that reached iSales, if any.

        The same list is the same bytes, or (``duplicates = "rows"``) also the same data rows
        however the file was written. None for a row an operator asked to send again.
        """
        if record.force_submit:
            return None
        return self.still_imported(record, duplicates)

    def still_imported(
        self, record: FileRecord, duplicates: DuplicatesBy = "rows"
    ) -> FileRecord | None:
        """Another row of the same campaign and list that counts as imported (not forgotten),
        whatever ``record`` itself is: what a file of that list dropped again is a duplicate of."""
        return self._imported_twin(self._db, record, duplicates)

    def _imported_twin(
        self, db: sqlite3.Connection, me: FileRecord, duplicates: DuplicatesBy
    ) -> FileRecord | None:
        if duplicates == "off":
            return None
        same = "sha256 = ?"
        keys: list[Any] = [me.sha256]
        if duplicates == "rows" and me.rows_fingerprint is not None:
            same = "(sha256 = ? OR rows_fingerprint = ?)"
            keys.append(me.rows_fingerprint)
        marks = ",".join("?" * len(IMPORTED_STATES))
        row = db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE campaign_id = ? AND {same} AND id != ?"
            f" AND forgotten_at IS NULL"
            f" AND (state IN ({marks}) OR (state = ? AND import_task_id IS NOT NULL"
            f" AND outcome = ?) OR (import_task_id IS NOT NULL AND json_valid(details)"
            f" AND json_extract(details, '$.import.succNum') > 0)"
            f" OR (state = ? AND {_PARKED_FROM} IN ({marks}))) ORDER BY rowid LIMIT 1",
            (
                me.campaign_id,
                *keys,
                me.id,
                *IMPORTED_STATES,
                FileState.settling,
                Outcome.done,
                FileState.parked,
                *IMPORTED_STATES,
            ),
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
                " outcome = NULL, settled_path = NULL, recheck_at = NULL, rechecks = 0,"
                " updated_at = ?, reason = ? WHERE id = ?",
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

    def resolve(self, file_id: str, *, task_id: str | None, actor: str, reason: str) -> FileRecord:
        """Settle an ``uncertain`` file on an operator's word, audited.

        With ``task_id`` (the operator found the import in iSales) the row tracks that task;
        without, it was not imported and goes back to ``claimed`` to be sent once more (still
        subject to the duplicate check against other files).

        Raises:
            LedgerError: the row is not ``uncertain``.
            TaskTakenError: another row owns that task.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT state, import_task_id FROM files WHERE id = ?", (file_id,)
            ).fetchone()
            if row is None or row["state"] != FileState.uncertain:
                found = row["state"] if row else "no such row"
                raise LedgerError(f"file {file_id} is {found}; only an uncertain file is resolved")
            known = row["import_task_id"]
            if known is not None and task_id not in (None, known):
                raise LedgerError(
                    f"iSales acknowledged file {file_id} as import task {known}, not {task_id}"
                )
            if task_id is None and known is not None:
                raise LedgerError(
                    f"iSales acknowledged file {file_id} as import task {known}: it was sent and "
                    f"must not be sent again; once the task has ended, resolve it with "
                    f"--imported {known}"
                )
            if task_id is not None:
                self._own(db, file_id, task_id)
                to_state, why = (
                    FileState.tracking,
                    f"resolved: imported as task {task_id}: {reason}",
                )
            else:
                to_state, why = FileState.claimed, f"resolved: not imported: {reason}"
            db.execute(
                "UPDATE files SET state = ?, import_task_id = ?, recheck_at = NULL, rechecks = 0,"
                " updated_at = ?, reason = ? WHERE id = ?",
                (to_state, task_id, utc_now(), why, file_id),
            )
            self._log(db, file_id, FileState.uncertain, to_state, actor, why)
        return self.get(file_id)

    def park(self, file_id: str, *, actor: str, reason: str) -> FileRecord:
        """Hold a file on an operator's word, audited: the daemon leaves it alone until
        :meth:`unpark`. Work the daemon was doing on it is dropped at its next step.

        Raises:
            LedgerError: the row is not in one of :data:`PARKABLE_STATES`, with why.
        """
        with self._transaction() as db:
            state = self._state_of(db, file_id)
            if state not in PARKABLE_STATES:
                raise LedgerError(f"file {file_id} is {state}: {_NOT_PARKABLE[state]}")
            why = f"parked: {reason}"
            db.execute(
                "UPDATE files SET state = ?, updated_at = ?, reason = ? WHERE id = ?",
                (FileState.parked, utc_now(), why, file_id),
            )
            self._log(db, file_id, state, FileState.parked, actor, why)
        return self.get(file_id)

    def unpark(self, file_id: str, *, actor: str, reason: str) -> FileRecord:
        """Give a parked file back to the daemon, in the state it was parked from, audited.

        Raises:
            LedgerError: the row is not parked.
        """
        with self._transaction() as db:
            state = self._state_of(db, file_id)
            if state is not FileState.parked:
                raise LedgerError(f"file {file_id} is {state}, not parked")
            (before,) = db.execute(
                f"SELECT {_PARKED_FROM} FROM files WHERE id = ?", (file_id,)
            ).fetchone()
            why = f"unparked: {reason}"
            db.execute(
                "UPDATE files SET state = ?, updated_at = ?, reason = ? WHERE id = ?",
                (before, utc_now(), why, file_id),
            )
            self._log(db, file_id, state, FileState(before), actor, why)
        return self.get(file_id)

    def forget(self, file_id: str, *, actor: str, reason: str) -> FileRecord:
        """Let a settled file's content be imported again, audited; its row, history, owned
        task and receipts stay.

        Raises:
            LedgerError: the row is not done or rejected, or is forgotten already.
        """
        with self._transaction() as db:
            state = self._state_of(db, file_id)
            if state not in _FORGETTABLE:
                raise LedgerError(
                    f"file {file_id} is {state or 'no such row'}; only a settled (done or "
                    "rejected) file can be forgotten"
                )
            (forgotten_at,) = db.execute(
                "SELECT forgotten_at FROM files WHERE id = ?", (file_id,)
            ).fetchone()
            if forgotten_at is not None:
                raise LedgerError(f"file {file_id} was forgotten already, at {forgotten_at}")
            # updated_at stays: it says when the file settled.
            db.execute("UPDATE files SET forgotten_at = ? WHERE id = ?", (utc_now(), file_id))
            self._log(db, file_id, state, state, actor, f"forgotten: {reason}")
        return self.get(file_id)

    @staticmethod
    def _state_of(db: sqlite3.Connection, file_id: str) -> FileState | None:
        row = db.execute("SELECT state FROM files WHERE id = ?", (file_id,)).fetchone()
        return None if row is None else FileState(row["state"])

    def operator_acted(self, file_id: str) -> bool:
        """Whether the row's latest transition was an operator's, not the daemon's."""
        row = self._db.execute(
            "SELECT actor FROM transitions WHERE file_id = ? ORDER BY seq DESC LIMIT 1",
            (file_id,),
        ).fetchone()
        return row is not None and row["actor"] != "daemon"

    def latest(self, states: Iterable[FileState], limit: int) -> list[FileRecord]:
        """The rows in ``states`` that changed last, newest first: for common states (settled
        ones), as it walks the rows from the newest change back until it has ``limit``."""
        wanted = list(states)
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM files INDEXED BY files_updated"
            f" WHERE state IN ({','.join('?' * len(wanted))}) ORDER BY updated_at DESC LIMIT ?",
            [*wanted, limit],
        )
        return [_record(r) for r in rows]

    def counts(self) -> dict[FileState, int]:
        """Files by state (from the state index alone: cheap on a large ledger)."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state")
        return {FileState(state): int(count) for state, count in rows}

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
        """The row that owns, or once owned, an import task (a reprocess does not free it)."""
        row = self._db.execute(
            "SELECT file_id FROM owned_tasks WHERE campaign_id = ? AND task_id = ?",
            (campaign_id, task_id),
        ).fetchone()
        return self.get(row["file_id"]) if row else None

    def owned_tasks(self, campaign_id: str) -> set[str]:
        """Every import task of the campaign that a row owns or once owned."""
        rows = self._db.execute(
            "SELECT task_id FROM owned_tasks WHERE campaign_id = ?", (campaign_id,)
        )
        return {r["task_id"] for r in rows}

    def unresolved(self, campaign_id: str) -> list[FileRecord]:
        """Rows of the campaign whose submission's outcome is not known: they may own a task."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE campaign_id = ? AND import_task_id IS NULL"
            f" AND submitted_at IS NOT NULL AND (state IN (?, ?)"
            f" OR (state = ? AND {_PARKED_FROM} = ?)) ORDER BY rowid",
            (
                campaign_id,
                FileState.submitting,
                FileState.uncertain,
                FileState.parked,
                FileState.uncertain,
            ),
        )
        return [_record(r) for r in rows]

    def due_rechecks(self, now: str) -> list[FileRecord]:
        """Uncertain rows whose next reconciliation is due."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE recheck_at IS NOT NULL AND recheck_at <= ?"
            " AND state = ? ORDER BY recheck_at, rowid",
            (now, FileState.uncertain),
        )
        return [_record(r) for r in rows]


_NOT_PARKABLE = {
    None: "no such row",
    FileState.claiming: "it is being taken out of the inbox right now; try again in a moment",
    FileState.submitting: "its upload to iSales may be under way; such a file is reconciled "
    "(the daemon does it, and parks it as uncertain if the facts cannot decide), never parked",
    FileState.settling: "its outcome is decided and it is being moved to done/ or rejected/",
    FileState.done: "it is settled; there is nothing to hold",
    FileState.rejected: "it is settled; there is nothing to hold",
    FileState.lost: "it is settled; there is nothing to hold",
    FileState.parked: "it is parked already",
}

_UNFINISHED = (
    FileState.claiming,
    FileState.claimed,
    FileState.submitting,
    FileState.tracking,
    FileState.settling,
)
