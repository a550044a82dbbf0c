"""The gate: a file is ready only when its name fits, it stopped changing, and it is a whole ZIP."""

from __future__ import annotations

import fnmatch
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from watcher.models import RemoteEntry

__all__ = (
    "RECEIPT_SUFFIXES",
    "TAIL_BYTES",
    "Name",
    "SeenOnce",
    "StabilityGate",
    "ZipVerdict",
    "check_zip",
    "is_candidate",
    "sort_name",
)

_TEMPORARY_PREFIXES = (".", "~$")
_TEMPORARY_SUFFIXES = (".part", ".filepart", ".partial", ".tmp", ".writing", ".crdownload")
RECEIPT_SUFFIXES = (".result.json", ".result.txt")  # settle writes them beside a file
_LOCAL_HEADER = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"
_OLE = bytes.fromhex("d0cf11e0a1b11ae1")
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_EOCD_BYTES = 22
# The end-of-central-directory record plus the longest comment ZIP allows.
TAIL_BYTES = _EOCD_BYTES + 0xFFFF


class Name(StrEnum):
    """What a name in an inbox is to the route."""

    candidate = "candidate"  # fits the pattern: a list to import
    unmatched = "unmatched"  # a file the route does not take: answered in rejected/, or ignored
    ignored = "ignored"  # a temporary name, or a file of the daemon's own: never touched


def sort_name(name: str, pattern: str) -> Name:
    """What ``name`` is to a route with ``pattern``.

    Temporary names (uploads in progress, Office lock files, and the dotfiles the daemon itself
    writes: its lease, access probes, receipts being written) are never touched, nor are
    receipts, whatever brought one into an inbox.
    """
    lowered = name.lower()
    if (
        lowered.startswith(_TEMPORARY_PREFIXES)
        or lowered.endswith(_TEMPORARY_SUFFIXES)
        or lowered.endswith(RECEIPT_SUFFIXES)
    ):
        return Name.ignored
    return Name.candidate if fnmatch.fnmatchcase(lowered, pattern.lower()) else Name.unmatched


def is_candidate(name: str, pattern: str) -> bool:
    """Whether a name is one the route imports: it fits ``pattern`` and is not a temporary name."""
    return sort_name(name, pattern) is Name.candidate


class ZipVerdict(StrEnum):
    complete = "complete"
    incomplete = "incomplete"  # may still be uploading; truncated if it stays so
    not_zip = "not_zip"
    old_excel = "old_excel"  # an OLE compound file: .xls, or an encrypted workbook


def check_zip(head: bytes, tail: bytes, size_bytes: int) -> ZipVerdict:
    """Judge whether the bytes are a complete ZIP archive from its first bytes and its tail.

    Args:
        head: the first 8 bytes of the file.
        tail: the last ``min(size_bytes, TAIL_BYTES)`` bytes.
        size_bytes: the file size.
    """
    if size_bytes == 0:
        return ZipVerdict.incomplete
    if head.startswith(_OLE):
        return ZipVerdict.old_excel
    if not head.startswith((_LOCAL_HEADER, _EMPTY_ZIP)):
        # A prefix of the magic is an upload that has barely started.
        return ZipVerdict.incomplete if _LOCAL_HEADER.startswith(head) else ZipVerdict.not_zip
    tail_start = size_bytes - len(tail)
    position = tail.rfind(_EOCD)
    while position >= 0:
        if position + _EOCD_BYTES <= len(tail):
            cd_size, cd_offset, comment_bytes = struct.unpack_from("<IIH", tail, position + 12)
            absolute = tail_start + position
            if absolute + _EOCD_BYTES + comment_bytes == size_bytes and (
                cd_offset + cd_size == absolute
                or (
                    cd_offset == 0xFFFFFFFF
                    and tail[max(0, position - 20) : position].startswith(_ZIP64_LOCATOR)
                )
            ):
                return ZipVerdict.complete
        position = tail.rfind(_EOCD, 0, position)
    return ZipVerdict.incomplete


@dataclass(slots=True)
class _Observation:
    size_bytes: int
    mtime: int
    unchanged_since: float


class StabilityGate:
    """Tracks (size, mtime) across listings, timed with our own monotonic clock.

    The remote mtime is only compared with itself, never with our wall clock, so clock skew and
    mtime precision cannot make a growing file look old.
    """

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_s = settle_s
        self._clock = clock
        self._seen: dict[str, _Observation] = {}

    def observe(self, key: str, entry: RemoteEntry) -> float:
        """Record a listing of ``key``; returns for how long it has been unchanged, in seconds."""
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None or (seen.size_bytes, seen.mtime) != (entry.size_bytes, entry.mtime):
            self._seen[key] = _Observation(entry.size_bytes, entry.mtime, now)
            return 0.0
        return now - seen.unchanged_since

    def waiting(self) -> tuple[int, float]:
        """How many files are being watched, and for how long the oldest has been unchanged."""
        if not self._seen:
            return 0, 0.0
        now = self._clock()
        return len(self._seen), max(now - seen.unchanged_since for seen in self._seen.values())

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def retain(self, keys: Iterable[str], prefix: str) -> None:
        """Forget files under ``prefix`` that are no longer listed."""
        keep = set(keys)
        for key in [k for k in self._seen if k.startswith(prefix) and k not in keep]:
            del self._seen[key]


class SeenOnce:
    """Remembers file versions already counted (an unmatched file left alone), per listing."""

    def __init__(self) -> None:
        self._seen: dict[str, RemoteEntry] = {}

    def is_new(self, key: str, entry: RemoteEntry) -> bool:
        """True the first time this version of ``key`` is seen; a changed file is new again."""
        if self._seen.get(key) == entry:
            return False
        self._seen[key] = entry
        return True

    def retain(self, keys: Iterable[str], prefix: str) -> None:
        """Forget files under ``prefix`` that are no longer listed."""
        keep = set(keys)
        for key in [k for k in self._seen if k.startswith(prefix) and k not in keep]:
            del self._seen[key]
