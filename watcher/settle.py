"""Settle: move the file to done/ or rejected/ and write its receipts. Safe to repeat."""

from __future__ import annotations

import contextlib
import json
import posixpath

import structlog

from watcher.errors import ClaimConflictError, FileGoneError
from watcher.ledger import Ledger
from watcher.models import FileRecord, FileState, Outcome
from watcher.receipt import receipt_json, receipt_text
from watcher.sources import Source

__all__ = ("bring_back", "settle", "write_parked_receipt")

log = structlog.get_logger(__name__)


async def _free_target(source: Source, record: FileRecord, folder: str) -> str:
    target = posixpath.join(folder, record.name)
    if not await source.exists(target):
        return target
    stem, dot, extension = record.name.rpartition(".")
    return posixpath.join(
        folder, f"{stem}.{record.id}{dot}{extension}" if dot else f"{record.name}.{record.id}"
    )


async def settle(source: Source, ledger: Ledger, record: FileRecord) -> FileRecord:
    """Finish a row in ``settling``: the file lands beside its receipts, never over another file."""
    assert record.outcome is not None, "settling needs an outcome"
    folder = posixpath.join(record.inbox, record.outcome.value)
    await source.makedirs(folder)
    if record.settled_path is None:
        target = await _free_target(source, record, folder)
        record = ledger.update(record.id, settled_path=target)
    assert record.settled_path is not None
    target = record.settled_path
    try:
        await source.rename(record.processing_path, target)
    except ClaimConflictError:
        # Someone dropped a file with our chosen name into done/ meanwhile: pick another.
        target = posixpath.join(folder, f"{record.id}.{record.name}")
        record = ledger.update(record.id, settled_path=target)
        await source.rename(record.processing_path, target)
    except FileGoneError:
        if not await source.exists(target):
            log.warning("file.vanished", file_id=record.id, path=record.processing_path)
    if record.force_submit or ledger.has_been(record.id, FileState.uncertain):
        # Parked once: its ON HOLD receipts may be here.
        for suffix in (".result.txt", ".result.json"):
            with contextlib.suppress(FileGoneError):
                await source.remove_file(record.processing_path + suffix)
    await source.remove_dir(record.processing_dir)
    # The .txt receipt is written last: when a person sees it, everything else is in place.
    await source.write_file(
        target + ".result.json",
        json.dumps(receipt_json(record), indent=2, ensure_ascii=False).encode() + b"\n",
    )
    await source.write_file(target + ".result.txt", receipt_text(record).encode())
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


async def write_parked_receipt(source: Source, record: FileRecord) -> None:
    """Write the receipts of a parked (``uncertain``) file beside it, in ``processing/<id>/``."""
    base = record.processing_path
    await source.write_file(
        base + ".result.json",
        json.dumps(receipt_json(record), indent=2, ensure_ascii=False).encode() + b"\n",
    )
    await source.write_file(base + ".result.txt", receipt_text(record).encode())
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
    for suffix in (".result.txt", ".result.json"):
        with contextlib.suppress(FileGoneError):
            await source.remove_file(record.settled_path + suffix)
