"""Text out of a workbook's XML streams: pieces cut on element ends, and the shared strings."""

from __future__ import annotations

import mmap
from array import array
from collections.abc import Iterable, Iterator
from itertools import accumulate, filterfalse, repeat
from operator import add, floordiv, getitem, methodcaller, mod, sub
from typing import IO

from watcher.errors import WorkbookRejected

__all__ = ("CHUNK_BYTES", "STRIDE", "BytePieces", "MappedStrings", "SharedStrings")

CHUNK_BYTES = 1 << 16  # small pieces: each becomes a list of cell tuples, kept in the caches
STRIDE = 16  # strings to an offset kept (SharedStrings)
_MOVE_BYTES = 8 << 20  # the step in which the second half of a table moves down
_CACHE_CHARS = 1 << 20  # the strings SharedStrings.each keeps, in characters
_LONG_GROUP = 1 << 12  # bytes of a group of strings past which one is found alone, not split
_SPLIT = methodcaller("split", b"\0")
_DECODE = methodcaller("decode")


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
        # While a piece finds no separator (a long row), reads grow with it: the copies of an
        # unfinished piece add up to twice its size, not to its size squared over a chunk.
        while data := self._stream.read(max(CHUNK_BYTES, len(rest))):
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
    """The shared-strings table as one UTF-8 buffer and a few offsets (compact in memory).

    Each string is followed by a NUL, which XML cannot hold. While the table is built, ``ends``
    holds where each string starts (``ends[i]``) and, for the last, where it ends; then
    :meth:`done` keeps only one offset in 16 (:data:`STRIDE`): 3 million strings need 0.75 MB
    of offsets instead of 12. A string is found from the offset of its group of 16 by
    splitting the group at its NULs; the last group split is kept, as cells mostly use the
    strings in the order they are numbered.
    """

    def __init__(self) -> None:
        self.buffer: bytearray | mmap.mmap = bytearray()
        # 4-byte offsets: Limits keeps the whole workbook, so this buffer, under 4 GB.
        self.ends = array("I", [0])
        self._starts = array("I")  # once done: where strings 0, 16, 32, ... start, and the end
        self._count = 0
        self._group = -1  # the last group split, and its strings
        self._members: list[bytes] = []
        self._cache: dict[int, str] = {}  # strings decoded by each(), and their length
        self._cached_chars = 0

    def _append(self, data: bytes) -> int:
        """Add ``data`` to the buffer; where it starts."""
        assert isinstance(self.buffer, bytearray)
        base = len(self.buffer)
        self.buffer += data
        return base

    def extend(self, strings: list[str]) -> None:
        """Add strings (none holds a NUL: XML cannot)."""
        if strings:
            self.extend_utf8("\x00".join(strings).encode().split(b"\x00"))

    def extend_utf8(self, strings: list[bytes]) -> None:
        """Add strings that are already UTF-8 bytes, as found in the XML."""
        if not strings:
            return
        data = b"\x00".join(strings) + b"\x00"
        base = self._append(data)
        lengths = map(len, strings)
        self.ends.extend(map(add, accumulate(lengths), range(base + 1, base + 1 + len(strings))))

    def done(self) -> None:
        """The table is whole: keep one offset in :data:`STRIDE` (see the class)."""
        if len(self.ends) == 0:
            return  # done already
        ends = self.ends
        self._count = len(ends) - 1
        self._starts = ends[:-1:STRIDE]
        self._starts.append(ends[-1])  # where the last group ends
        self.ends = array("I")

    def _strings_of(self, group: int) -> list[bytes]:
        """The strings of ``group`` (STRIDE of them, fewer in the last), as bytes."""
        if group != self._group:
            starts = self._starts
            self._members = bytes(self.buffer[starts[group] : starts[group + 1] - 1]).split(b"\0")
            self._group = group
        return self._members

    def _utf8(self, index: int) -> bytes | bytearray:
        """String ``index`` as UTF-8, found after the NULs before it in its group: only its own
        bytes are copied (a group of 16 long strings holds megabytes)."""
        group, member = divmod(index, STRIDE)
        buffer, at = self.buffer, self._starts[group]
        for _ in range(member):
            at = buffer.find(b"\0", at) + 1
        return buffer[at : buffer.find(b"\0", at)]

    def __getitem__(self, index: int) -> str:
        """String ``index``; IndexError if there is none (a negative index included)."""
        if not 0 <= index < self._count:
            raise IndexError(index)
        group, starts = index // STRIDE, self._starts
        if group != self._group and starts[group + 1] - starts[group] > _LONG_GROUP:
            return self._utf8(index).decode()
        return self._strings_of(group)[index % STRIDE].decode()

    def each(self, indices: list[int]) -> list[str]:
        """Strings ``indices`` (which exist), each decoded alone, in loops that run in C.

        These are mostly values many rows share, far from the strings of the rows around
        them (a city, a batch name): the last ones decoded are kept, up to
        :data:`_CACHE_CHARS` characters, let go of once a call has passed the bound (never
        between finding which are kept and answering with them).
        """
        cache = self._cache
        fresh = list(filterfalse(cache.__contains__, indices))
        if fresh:
            texts = list(map(_DECODE, self._members_of(fresh)))
            self._cached_chars += sum(map(len, texts))
            cache.update(zip(fresh, texts, strict=True))
        found = list(map(cache.__getitem__, indices))
        if self._cached_chars > _CACHE_CHARS:  # let go once they are found, not before
            cache.clear()
            self._cached_chars = 0
        return found

    def _members_of(self, indices: list[int]) -> Iterable[bytes | bytearray]:
        """Strings ``indices`` as UTF-8: each group split at its NULs, in C; or, if a group is
        long, each string found alone (:meth:`_utf8`), which copies no other."""
        starts = self._starts
        groups = list(map(floordiv, indices, repeat(STRIDE)))
        begins = list(map(starts.__getitem__, groups))
        ends = list(map(starts.__getitem__, map(add, groups, repeat(1))))
        if max(map(sub, ends, begins)) > _LONG_GROUP:
            return map(self._utf8, indices)
        chunks = map(self.buffer.__getitem__, map(slice, begins, map(sub, ends, repeat(1))))
        return map(getitem, map(_SPLIT, chunks), map(mod, indices, repeat(STRIDE)))

    def stretch(self, low: int, high: int) -> list[str] | None:
        """Strings ``low`` to ``high``, decoded together; None if one of their groups is broken
        (invalid UTF-8) or holds a NUL (then each must be decoded alone)."""
        first, last = low // STRIDE, high // STRIDE + 1
        starts = self._starts
        try:
            texts = self.buffer[starts[first] : starts[last] - 1].decode().split("\0")
        except UnicodeDecodeError:
            return None
        if len(texts) != min(last * STRIDE, self._count) - first * STRIDE:
            return None
        skip = low - first * STRIDE
        return texts[skip : skip + high - low + 1]

    def __len__(self) -> int:
        return self._count if len(self.ends) == 0 else len(self.ends) - 1


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
        self._limit = stop

    def _append(self, data: bytes) -> int:
        base = self.ends[-1]
        if base + len(data) > self._limit:
            raise OverflowError("the shared strings outgrew their part of the mapping")
        self._map[base : base + len(data)] = data
        return base

    def join(self, ends: memoryview) -> None:
        """Add the strings of the second half, whose offsets (from its start) are ``ends``
        (unsigned ints), and make the table :meth:`done`.

        The second half moves down a step at a time, and the pages it leaves are given back
        after each step: the table never holds more pages than its bytes and one step. Of the
        offsets, only those :meth:`done` keeps are ever copied.
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
        count = len(self.ends) - 1
        self.done()
        self._starts.pop()  # the first half's end: the second half's groups follow
        # Of the second half's strings, the first to start a group is the one whose number in
        # the whole table is a multiple of STRIDE.
        self._starts.extend(map(add, ends[-count % STRIDE : -1 : STRIDE], repeat(end - start)))
        self._starts.append(end + size)
        self._count += len(ends) - 1

    def _free(self, begin: int, stop: int) -> None:
        """Give back the whole pages between ``begin`` and ``stop``; they read as zeros again."""
        first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE
        last = stop // mmap.PAGESIZE * mmap.PAGESIZE
        if first < last and hasattr(mmap, "MADV_REMOVE"):  # Linux; elsewhere kept till the end
            self._map.madvise(mmap.MADV_REMOVE, first, last - first)
