"""Settle: move the file to done/ or rejected/ and write its receipts. Safe to repeat."""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath

import structlog

from watcher.errors import ClaimConflictError, FileGoneError
from watcher.gate import RECEIPT_SUFFIXES
from watcher.language import Language
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, Outcome
from watcher.receipt import receipt_json, receipt_text
from watcher.sources import Source

__all__ = (
    "bring_back",
    "fit_name",
    "receipt_paths",
    "settle",
    "write_parked_receipt",
    "written_receipt_text",
)

_NAME_MAX = 255  # bytes in one file name, on every file system the daemon meets


def fit_name(name: str, suffix: str = "") -> str:
    """``name + suffix``, shortened with a hash of the whole name if it would be too long.

    A 250-byte name is a valid file, but its receipt's name would not be: it keeps its start,
    then ``~`` and 8 hex digits that tell such names apart.
    """
    whole = name + suffix
    if len(whole.encode()) <= _NAME_MAX:
        return whole
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    room = _NAME_MAX - len(suffix.encode()) - len(digest) - 1
    start = name.encode()[:room].decode("utf-8", errors="ignore")
    return f"{start}~{digest}{suffix}"


def receipt_paths(path: str) -> tuple[str, str]:
    """Where the JSON and the text receipt of the file at ``path`` go."""
    folder, name = posixpath.split(path)
    json_path, text_path = (posixpath.join(folder, fit_name(name, s)) for s in RECEIPT_SUFFIXES)
    return json_path, text_path


log = structlog.get_logger(__name__)


def _other_name(record: FileRecord, folder: str) -> str:
    """Where the file goes when ``folder`` holds another file of its name: ``name.<id>.xlsx``."""
    stem, dot, extension = record.name.rpartition(".")
    if not dot:
        return posixpath.join(folder, fit_name(record.name, f".{record.id}"))
    return posixpath.join(folder, fit_name(stem, f".{record.id}{dot}{extension}"))


def _is_shortened(json_path: str, beside: str) -> bool:
    return posixpath.basename(json_path) != posixpath.basename(beside) + ".result.json"


async def _write_receipts(
    source: Source, record: FileRecord, beside: str, language: Language
) -> None:
    """Both receipts beside ``beside``; the text one last: when a person sees it, all is there."""
    json_path, text_path = receipt_paths(beside)
    body = receipt_json(record, language)
    shortened = _is_shortened(json_path, beside)
    if shortened:
        body["receipt_name_shortened"] = True
    await source.write_file(
        json_path, json.dumps(body, indent=2, ensure_ascii=False).encode() + b"\n"
    )
    text = receipt_text(record, language, name_shortened=shortened)
    await source.write_file(text_path, text.encode())


def written_receipt_text(record: FileRecord, language: Language = "en") -> str | None:
    """The text receipt written for a settled or uncertain row, rebuilt from the row by the
    same function (the same text); None for a row that has none."""
    if record.state is FileState.uncertain:
        beside = record.processing_path
    elif record.state in (FileState.done, FileState.rejected) and record.settled_path:
        beside = record.settled_path
    else:
        return None
    shortened = _is_shortened(receipt_paths(beside)[0], beside)
    return receipt_text(record, language, name_shortened=shortened)


async def _move_aside(
    source: Source, ledger: Ledger, record: FileRecord, folder: str
) -> tuple[FileRecord, str]:
    """Settle as ``name.<id>.xlsx``: ``folder`` holds another file of that name."""
    target = _other_name(record, folder)
    if target == record.settled_path:
        target = posixpath.join(folder, fit_name(f"{record.id}.{record.name}"))
    record = ledger.update(record.id, settled_path=target)
    try:
        await source.rename(record.processing_path, target)
    except FileGoneError:
        # Gone from processing/ (its receipts still say what happened, under this name).
        log.warning("file.vanished", file_id=record.id, path=record.processing_path)
    return record, target


async def settle(
    source: Source, ledger: Ledger, record: FileRecord, *, language: Language = "en"
) -> FileRecord:
    """Finish a row in ``settling``: the file lands beside its receipts, never over another file.

    ``language``: the route's ``receipt_language``, for the text receipt.
    """
    assert record.outcome is not None, "settling needs an outcome"
    folder = posixpath.join(record.inbox, record.outcome.value)
    await source.makedirs(folder)
    first_try = record.settled_path is None
    if first_try:
        # Noted before the move, so that a retry knows where an earlier attempt put it.
        record = ledger.update(record.id, settled_path=posixpath.join(folder, record.name))
    assert record.settled_path is not None
    target = record.settled_path
    try:
        # A rename never overwrites: a file of that name already there is a conflict.
        await source.rename(record.processing_path, target)
    except ClaimConflictError:
        # Another file of that name is there (an earlier drop's), unless an earlier attempt of
        # ours moved it there and failed after that: only a retry may find its file gone.
        if first_try or await source.exists(record.processing_path):
            record, target = await _move_aside(source, ledger, record, folder)
    except FileGoneError:
        if not await source.exists(target):
            log.warning("file.vanished", file_id=record.id, path=record.processing_path)
        elif first_try:  # gone, and the file of that name is another's: its receipts stay
            record, target = await _move_aside(source, ledger, record, folder)
    if record.force_submit or ledger.has_been(record.id, FileState.uncertain):
        # Parked once: its ON HOLD receipts may be here.
        for receipt in receipt_paths(record.processing_path):
            with contextlib.suppress(FileGoneError):
                await source.remove_file(receipt)
    await source.remove_dir(record.processing_dir)
    await _write_receipts(source, record, target, language)
    final = FileState.done if record.outcome is Outcome.done else FileState.rejected
    record = ledger.transition(record.id, final, expect=FileState.settling)
    log.info(
        "file.settled",
        file_id=record.id,
        route=record.route,
        file=record.name,
        state=final.value,
        reason=record.reason,
        import_task_id=record.import_task_id,
        sha256=record.sha256,
        settled_path=target,
    )
    return record


async def write_parked_receipt(
    source: Source, record: FileRecord, language: Language = "en"
) -> None:
    """Write the receipts of a parked (``uncertain``) file beside it, in ``processing/<id>/``."""
    await _write_receipts(source, record, record.processing_path, language)
    log.warning("file.parked", file_id=record.id, file=record.name, reason=record.reason)


async def bring_back(source: Source, record: FileRecord) -> None:
    """Undo a settlement for ``ledger reprocess``: the file goes back to ``processing/<id>/``.

    Safe to repeat: a file already back stays where it is.
    """
    if record.settled_path is None:
        return
    await source.makedirs(record.processing_dir)
    if not await source.exists(record.processing_path):
        await source.rename(record.settled_path, record.processing_path)
    for receipt in receipt_paths(record.settled_path):
        with contextlib.suppress(FileGoneError):
            await source.remove_file(receipt)
