"""Text out of a workbook's XML streams: pieces cut on element ends, and the shared strings."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from itertools import accumulate
from operator import add
from typing import IO

from watcher.errors import WorkbookRejected

__all__ = ("CHUNK_BYTES", "BytePieces", "SharedStrings")

CHUNK_BYTES = 1 << 18  # small pieces: each becomes a list of cell tuples


class BytePieces:
    """Cut a byte stream into pieces that each end on ``separator`` (an ASCII tag end).

    Cutting after an ASCII character never splits a UTF-8 sequence, so each piece decodes alone;
    pieces that need no decoding (the common shared strings) are never decoded at all.
    """

    def __init__(self, stream: IO[bytes], separator: bytes, limit_bytes: int, what: str) -> None:
        self.position = 0  # bytes read from the stream when the last piece was cut
        self.offset = 0  # where the last piece starts in the stream
        self._stream = stream
        self._separator = separator
        self._limit_bytes = limit_bytes
        self._what = what

    def __iter__(self) -> Iterator[bytes]:
        rest = b""
        cut_at = 0  # bytes yielded so far
        while data := self._stream.read(CHUNK_BYTES):
            self.position += len(data)
            data = rest + data
            cut = data.rfind(self._separator)
            if cut < 0:
                rest = data
                if len(rest) > self._limit_bytes:
                    raise WorkbookRejected(
                        "cell_too_long",
                        f"{self._what} is larger than "
                        f"{self._limit_bytes:,} bytes; Excel cannot have made it",
                    )
                continue
            cut += len(self._separator)
            rest = data[cut:]
            self.offset = cut_at
            cut_at += cut
            yield data[:cut]
        if rest:
            self.offset = cut_at
            yield rest


class SharedStrings:
    """The shared-strings table as one UTF-8 buffer and an array of offsets (compact in memory)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        # 4-byte offsets: Limits keeps the whole workbook, so this buffer, under 4 GB.
        self.ends = array("I", [0])

    def extend(self, strings: list[str]) -> None:
        if not strings:
            return
        data = ("\x00".join(strings) + "\x00").encode()
        base = len(self.buffer)
        self.buffer += data
        lengths = map(len, data.split(b"\x00")[:-1])
        self.ends.extend(map(add, accumulate(lengths), range(base + 1, base + 1 + len(strings))))

    def extend_utf8(self, strings: list[bytes]) -> None:
        """Add strings that are already UTF-8 bytes, as found in the XML."""
        if not strings:
            return
        data = b"\x00".join(strings) + b"\x00"
        base = len(self.buffer)
        self.buffer += data
        lengths = map(len, strings)
        self.ends.extend(map(add, accumulate(lengths), range(base + 1, base + 1 + len(strings))))

    def __getitem__(self, index: int) -> str:
        return self.buffer[self.ends[index] : self.ends[index + 1] - 1].decode()

    def __len__(self) -> int:
        return len(self.ends) - 1
