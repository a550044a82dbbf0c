"""The languages receipts are written in: gettext catalogs under ``watcher/locale/``.

Messages are marked in the code where they are written (``N_`` for a message kept for later,
``gettext``/``ngettext`` where it is said) and translated from ``.po`` catalogs compiled to
``.mo`` (``make messages``). English is the source language and needs no catalog.
"""

from __future__ import annotations

import functools
import gettext
from pathlib import Path
from typing import Literal

__all__ = ("DOMAIN", "LANGUAGES", "LOCALE_DIR", "N_", "Language", "language_of", "translator")

Language = Literal["en", "zh_CN"]
LANGUAGES: tuple[Language, ...] = ("en", "zh_CN")
DOMAIN = "watcher"
LOCALE_DIR = Path(__file__).parent / "locale"


def N_(message: str) -> str:  # noqa: N802 - the name gettext's tools look for
    """Mark ``message`` for the catalog; it is translated where it is shown."""
    return message


def language_of(code: str) -> Language:
    """The language a setting names: ``zh_CN``, ``zh-CN`` and ``zh-cn`` are one language.

    Raises:
        ValueError: naming the languages there are.
    """
    folded = code.strip().replace("-", "_").casefold()
    for language in LANGUAGES:
        if folded == language.casefold():
            return language
    raise ValueError(f"{code!r} is not a receipt language; use one of {', '.join(LANGUAGES)}")


@functools.cache
def translator(language: Language) -> gettext.NullTranslations:
    """The catalog of ``language``; English, the source language, is the messages themselves.

    Raises:
        OSError: the compiled catalog is missing from the installed package.
    """
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[language])
