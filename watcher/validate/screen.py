"""The screen of a batch of rows: which rows the per-row rules must read one by one.

Most rows of a list are plain: every template cell a string within its limit, ``called`` in
its canonical form, a real ``recycleTime``, a priority from 1 to 5. The screen tests a column
of a whole batch at a time in loops that run in C (``map`` over a compiled pattern, ``len``,
``type``, ``datetime.fromisoformat``), and names the rows a test fails.

A row the screen passes is one :meth:`RowChecker.check <watcher.validate.rules.RowChecker>`
would find nothing wrong with, so the screen may be stricter than the rules, never looser:
whatever it is unsure of (a number in a text column, a value with spaces around it, a date
in another shape) goes to the rules, which say what is wrong or that nothing is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from itertools import compress, count, repeat
from operator import and_, ge, lt, not_
from typing import Any

__all__ = ("CALLED", "NUMBERS", "Screen", "screens")

# ``called`` as RowChecker._called reads it without fault: a list of entries in the canonical
# form (no spaces, calledNo first, a delayTime of 0 to 7200, a type free of what JSON escapes),
# or the official template's single entry [{'calledNo':13800138000}]. NUMBERS finds their numbers:
# only a key in double quotes or the template's opening, as a type may spell 'calledNo':1 itself.
_ENTRY = (
    r'\{"calledNo":"[0-9*#]{1,24}"'
    r'(?:,"delayTime":"(?:[0-9]{1,3}|[0-6][0-9]{3}|7[01][0-9]{2}|7200)")?'
    r'(?:,"type":"[^"\\\x00-\x1f]*")?\}'
)
CALLED = re.compile(rf"\[{_ENTRY}(?:,{_ENTRY})*\]|\[\{{'calledNo':(?:0|[1-9][0-9]{{0,23}})\}}\]")
NUMBERS = re.compile(r"""(?:"calledNo":"|^\[\{'calledNo':)([0-9*#]{1,24})""")
_RECYCLE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_CALLED_LIMIT = 4096  # longer is read by the rules
_ONLY_STR = {str}
_ONLY_INT = {int}

Screen = Callable[[list[Any]], list[int]]
"""Takes a column's values (one per row of the batch); gives the positions that fail."""


def _failing(oks: Iterable[Any]) -> list[int]:
    """The positions of the false values of ``oks``."""
    return list(compress(count(), map(not_, oks)))


def _text(limit: int, pattern: re.Pattern[str] | None = None) -> Screen:
    """Strings of 1 to ``limit`` characters, matching ``pattern`` whole if one is given."""

    def screen(values: list[Any]) -> list[int]:
        texts = values
        if set(map(type, values)) != _ONLY_STR:  # "" stands for anything else: it fails
            texts = [value if type(value) is str else "" for value in values]
        lengths = list(map(len, texts))
        if min(lengths) > 0 and max(lengths) <= limit:
            if pattern is None:
                return []
            found = list(map(pattern.fullmatch, texts))
            return [] if all(found) else _failing(found)
        fits = map(and_, map(lt, repeat(0), lengths), map(ge, repeat(limit), lengths))
        if pattern is not None:
            fits = map(and_, fits, map(bool, map(pattern.fullmatch, texts)))
        return _failing(fits)

    return screen


def _parsed(values: list[Any], failing: set[int], parse: Callable[[Any], Any]) -> list[int]:
    """``failing``, and the positions of the other values ``parse`` refuses (ValueError)."""
    for at, value in enumerate(values):
        if at not in failing:
            try:
                parse(value)
            except ValueError:
                failing.add(at)
    return sorted(failing)


def _json_text(limit: int) -> Screen:
    """Strings within ``limit`` that are JSON (callData of an intelligent-IVR campaign)."""
    texts = _text(limit)

    def screen(values: list[Any]) -> list[int]:
        return _parsed(values, set(texts(values)), json.loads)

    return screen


_RECYCLE_TEXT = _text(19, _RECYCLE)


def _recycle_time(values: list[Any]) -> list[int]:
    """``yyyy-mm-dd hh:mm:ss`` in ASCII digits, and a real moment of the calendar."""
    failing = set(_RECYCLE_TEXT(values))
    if not failing:
        try:
            list(map(datetime.fromisoformat, values))  # all at once, in C, most of the time
        except ValueError:
            pass
        else:
            return []
    return _parsed(values, failing, datetime.fromisoformat)


def _priority(values: list[Any]) -> list[int]:
    """Whole numbers from 1 to 5 (a bool is not one)."""
    if set(map(type, values)) == _ONLY_INT and min(values) >= 1 and max(values) <= 5:
        return []
    return [at for at, value in enumerate(values) if not (type(value) is int and 1 <= value <= 5)]


def screens(lengths: dict[str, int], *, call_data_json: bool) -> dict[str, Screen]:
    """The screen of each template column, with the rules' ``lengths`` (characters at most)."""
    return {
        "sessionId": _text(lengths["sessionId"]),
        "called": _text(_CALLED_LIMIT, CALLED),
        "caller": _text(lengths["caller"]),
        "callData": (_json_text if call_data_json else _text)(lengths["callData"]),
        "customField": _text(lengths["customField"]),
        "recycleTime": _recycle_time,
        "priority": _priority,
    }
