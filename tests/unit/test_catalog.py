"""The receipts' message catalogs: every message marked in the code is translated, the
placeholders survive the translation, and the shipped .mo is the compiled .po (make messages)."""

from __future__ import annotations

import io
import string
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

import watcher
from watcher.language import DOMAIN, LANGUAGES, LOCALE_DIR, language_of, translator
from watcher.validate import KINDS

PACKAGE = Path(watcher.__file__).parent
TRANSLATED = [language for language in LANGUAGES if language != "en"]


def marked() -> set[str | tuple[str, ...]]:
    """Every message the code marks (gettext, ngettext, N_), as Babel extracts them."""
    return {message for _, _, message, _, _ in extract_from_dir(str(PACKAGE))}


def catalog(language: str):  # type: ignore[no-untyped-def]
    with open(LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po", "rb") as po:
        return read_po(po, locale=language)


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_marked_message_is_translated(language):
    messages = marked()
    assert len(messages) > 100
    po = catalog(language)
    missing = []
    for message in messages:
        entry = po.get(message)
        strings = entry.string if entry is not None else None
        if isinstance(strings, tuple):
            strings = strings[0] if all(strings) else ""
        if not strings or (entry is not None and entry.fuzzy):
            missing.append(message)
    assert missing == []


@pytest.mark.parametrize("language", TRANSLATED)
def test_translations_keep_every_placeholder(language):
    for entry in catalog(language):
        if not entry.id:
            continue
        ids = entry.id if isinstance(entry.id, tuple) else (entry.id,)
        strings = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        expected = set().union(*(fields(text) for text in ids))
        for text in strings:
            # (A JSON example in advice parses as fields too: it must survive as it is.)
            assert fields(text) == expected, entry.id


def test_every_kind_of_problem_is_marked_for_the_catalog():
    messages = marked()
    for kind, info in KINDS.items():
        assert info.title in messages, kind
        assert info.advice in messages, kind


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_shipped_catalog_is_the_compiled_po(language):
    compiled = io.BytesIO()
    write_mo(compiled, catalog(language))
    shipped = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.mo"
    assert shipped.read_bytes() == compiled.getvalue(), "run: make messages"


def test_the_package_data_ships_the_compiled_catalogs():
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["watcher"]
    for language in TRANSLATED:
        shipped = f"locale/{language}/LC_MESSAGES/{DOMAIN}.mo"
        assert any(fnmatch(shipped, glob) for glob in globs)


def test_a_language_is_named_as_people_write_it():
    assert language_of("zh-CN") == language_of("zh_cn") == language_of(" zh_CN ") == "zh_CN"
    assert language_of("EN") == "en"
    with pytest.raises(ValueError, match="use one of en, zh_CN"):
        language_of("fr")
    assert translator("zh_CN").gettext("Nothing.") == "无需任何操作。"
    assert translator("en").gettext("Nothing.") == "Nothing."
