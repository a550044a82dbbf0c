"""Text out of a workbook's XML streams: pieces cut on element ends, and the shared strings."""

from __future__ import annotations

import mmap
from array import array
from collections.abc import Iterator
from itertools import accumulate, repeat
from operator import add
from typing import IO

from watcher.errors import WorkbookRejected

__all__ = ("CHUNK_BYTES", "BytePieces", "MappedStrings", "SharedStrings")

CHUNK_BYTES = 1 << 18  # small pieces: each becomes a list of cell tuples
_MOVE_BYTES = 8 << 20  # the step in which the second half of a table moves down


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
    """The shared-strings table as one UTF-8 buffer and an array of offsets (compact in memory).

    String ``i`` is ``buffer[ends[i] : ends[i + 1] - 1]``: each is followed by a NUL.
    """

    def __init__(self) -> None:
        self.buffer: bytearray | mmap.mmap = bytearray()
        # 4-byte offsets: Limits keeps the whole workbook, so this buffer, under 4 GB.
        self.ends = array("I", [0])

    def _append(self, data: bytes) -> int:
        """Add ``data`` to the buffer; where it starts."""
        assert isinstance(self.buffer, bytearray)
        base = len(self.buffer)
        self.buffer += data
        return base

    def extend(self, strings: list[str]) -> None:
        if not strings:
            return
        data = ("\x00".join(strings) + "\x00").encode()
        base = self._append(data)
        lengths = map(len, data.split(b"\x00")[:-1])
        self.ends.extend(map(add, accumulate(lengths), range(base + 1, base + 1 + len(strings))))

    def extend_utf8(self, strings: list[bytes]) -> None:
        """Add strings that are already UTF-8 bytes, as found in the XML."""
        if not strings:
            return
        data = b"\x00".join(strings) + b"\x00"
        base = self._append(data)
        lengths = map(len, strings)
        self.ends.extend(map(add, accumulate(lengths), range(base + 1, base + 1 + len(strings))))

    def __getitem__(self, index: int) -> str:
        return self.buffer[self.ends[index] : self.ends[index + 1] - 1].decode()

    def __len__(self) -> int:
        return len(self.ends) - 1


class MappedStrings(SharedStrings):
    """A part of a shared-strings table written into shared memory, from ``start`` to ``stop``.

    Two processes read the two halves of ``sharedStrings.xml`` into one shared mapping at once:
    the first half from 0, the second from where its XML starts, which the first half's text
    cannot reach (text is shorter than the XML it comes from). :meth:`join` then moves the
    second half down behind the first and frees what is left.
    """

    def __init__(self, buffer: mmap.mmap, start: int, stop: int) -> None:
        super().__init__()
        self.buffer = self._map = buffer
        self.ends = array("I", [start])
        self._stop = stop

    def _append(self, data: bytes) -> int:
        base = self.ends[-1]
        if base + len(data) > self._stop:
            raise OverflowError("the shared strings outgrew their part of the mapping")
        self._map[base : base + len(data)] = data
        return base

    def join(self, ends: array[int]) -> None:
        """Add the strings of the second half, whose offsets (from its start) are ``ends``.

        The second half moves down a step at a time, and the pages it leaves are given back
        after each step: the table never holds more pages than its bytes and one step.
        """
        end, start = self.ends[-1], ends[0]
        size = ends[-1] - start
        moved = 0
        while moved < size:
            step = min(_MOVE_BYTES, size - moved)
            self._map.move(end + moved, start + moved, step)
            moved += step
            self._free(max(end + moved, start), start + moved)  # moved, and not written over
        self._free(end + size, len(self._map))
        self.ends.extend(map(add, ends[1:], repeat(end - start)))

    def _free(self, begin: int, stop: int) -> None:
        """Give back the whole pages between ``begin`` and ``stop``; they read as zeros again."""
        first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE
        last = stop // mmap.PAGESIZE * mmap.PAGESIZE
        if first < last and hasattr(mmap, "MADV_REMOVE"):  # Linux; elsewhere kept till the end
            self._map.madvise(mmap.MADV_REMOVE, first, last - first)
