"""``isales-watcher config example|show``: the configuration, written from the settings model.

``example`` is generated from the model (every key, its default or an example, its meaning), so
the documentation cannot drift from the code; ``show`` prints the configuration in effect, with
secrets masked and the place each value came from.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from watcher.config_layers import ENV_PREFIX, Key, Layers, entry_model, field_model
from watcher.console import EX_OK, fail_config, say, warn
from watcher.errors import ConfigError
from watcher.settings import Settings, read_settings

__all__ = ("add_config_commands", "example_text", "show_text")

_WIDTH = 100
_MASK = '"********"'
# Keys the example sets although the model does not require them: without them, a file made
# from the example could not log in (a credential, a host key) or would import from "/".
_SET_IN_EXAMPLE = frozenset(
    {
        ("isales", "access_key_file"),
        ("isales", "secret_key_file"),
        ("sftp", "private_key_file"),
        ("sftp", "known_hosts_file"),
        ("sftp", "base_path"),
        ("routes", "campaign_id"),
    }
)
_HEADER = f"""\
# isales-watcher configuration, as written by `isales-watcher config example`.
#
# A line "key = value" is needed: its value is an example, make it yours. A line
# "# key = value" shows the default (or an example, for a key without one): remove the "#" to
# set it. Any key can also be set by an environment variable, which wins over this file:
# {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}DAEMON__POLL_INTERVAL_S=2 (lists as JSON).
# A *_file key given as a bare name ("isales_sk") names a file in $CREDENTIALS_DIRECTORY
# (set by systemd's LoadCredential=, and to /run/secrets in the container image)."""


@dataclass(frozen=True, slots=True)
class _Section:
    """One table of the file: ``[isales]``, or one ``[[routes]]`` entry."""

    key: Key  # ("isales",) or ("routes", 0)
    header: str  # "[isales]" or "[[routes]]"
    model: type[BaseModel]
    field: FieldInfo  # the field of Settings that holds it
    value: BaseModel | None  # None: not configured (show), or always (example)


def _sections(settings: Settings | None) -> Iterator[_Section]:
    for name, field in Settings.model_fields.items():
        model = field_model(field)
        if model is not None:
            value = getattr(settings, name) if settings is not None else None
            yield _Section((name,), f"[{name}]", model, field, value)
            continue
        # A list of tables: [[routes]], one entry in the example, each configured one in show.
        entry = entry_model(field)
        assert entry is not None, f"{name}: neither a table nor a list of tables"
        entries = getattr(settings, name) if settings is not None else (None,)
        for index, value in enumerate(entries):
            yield _Section((name, index), f"[[{name}]]", entry, field, value)


def _toml(value: Any) -> str:
    """A TOML value: the scalars, paths and lists that settings hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _comment(text: str) -> list[str]:
    return textwrap.wrap(
        text, _WIDTH, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False
    )


def _is_secret(field: FieldInfo) -> bool:
    return SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))


def _example_value(name: str, field: FieldInfo, *, use_example: bool) -> Any:
    has_default = not field.is_required() and field.default is not None
    if field.examples and (use_example or not has_default or field.default_factory is not None):
        return field.examples[0]
    if field.default_factory is not None or field.default is None:
        raise ValueError(f"{name}: a key without a default needs examples= to be shown")
    return field.default


def _example_line(section: _Section, name: str, field: FieldInfo) -> str:
    chosen = (section.key[0], name) in _SET_IN_EXAMPLE
    line = f"{name} = {_toml(_example_value(name, field, use_example=chosen))}"
    # A secret is never written in clear: its *_file twin is set instead.
    needed = chosen or (field.is_required() and not _is_secret(field))
    return line if needed else f"# {line}"


def example_text() -> str:
    """The whole example configuration: valid TOML, every key with its meaning."""
    lines = [_HEADER]
    for section in _sections(None):
        lines.append("")
        lines.extend(_comment(section.field.description or ""))
        optional = not section.field.is_required() and section.field.default is None
        lines.append(f"# {section.header}" if optional else section.header)
        for name, field in section.model.model_fields.items():
            lines.append("")
            lines.extend(_comment(field.description or ""))
            line = _example_line(section, name, field)
            lines.append(f"# {line.removeprefix('# ')}" if optional else line)
    return "\n".join(lines) + "\n"


def _source(layers: Layers, key: Key, field: FieldInfo) -> str:
    """Where a value in effect came from: a file line, a variable, a secret's file, a default."""
    for end in range(len(key), 0, -1):
        origin = layers.origins.get(key[:end])
        if origin is not None and (end == len(key) or origin.startswith("$")):
            given = layers.given(key)
            if str(key[-1]).endswith("_file") and given and not Path(given).is_absolute():
                return f"{origin}, in $CREDENTIALS_DIRECTORY"
            return origin
    if _is_secret(field) and layers.given((*key[:-1], f"{key[-1]}_file")):
        return f"read from {key[-1]}_file"
    return "default"


def _shown_line(layers: Layers, section: _Section, name: str, field: FieldInfo) -> str:
    key = (*section.key, name)
    value = getattr(section.value, name)
    source = _source(layers, key, field)
    if value is None:
        return f"# {name} is not set ({source})"
    masked = isinstance(value, SecretStr) or (_is_secret(field) and value)
    text = _MASK if masked else _toml(value)
    return f"{f'{name} = {text}':<50} # {source}"


def show_text(settings: Settings, layers: Layers) -> str:
    """The configuration in effect as TOML, secrets masked, each value with its source."""
    lines = [
        f"# The configuration in effect: {layers.path}, with {ENV_PREFIX}* variables over it.",
        "# Secrets are masked. Each value says where it came from.",
    ]
    for section in _sections(settings):
        lines.append("")
        if section.value is None:
            lines.append(f"# {section.header} is not set")
            continue
        lines.append(section.header)
        for name, field in section.model.model_fields.items():
            lines.append(_shown_line(layers, section, name, field))
    return "\n".join(lines) + "\n"


def _example(args: argparse.Namespace) -> int:
    say(example_text().rstrip("\n"))
    return EX_OK


def _show(args: argparse.Namespace) -> int:
    try:
        settings, layers = read_settings(args.config, warn=warn)
    except ConfigError as exc:
        return fail_config(exc)
    say(show_text(settings, layers).rstrip("\n"))
    return EX_OK


def add_config_commands(commands: Any, config: argparse.ArgumentParser) -> None:
    """The ``config`` sub-commands, on the command line's sub-parsers."""
    parser = commands.add_parser(
        "config",
        help="write an example configuration, or show the one in effect",
        description="Write a complete, commented example configuration, or show the "
        "configuration in effect. Example: isales-watcher config example > config.toml. Exit "
        "codes: 0 written or shown, 78 a configuration error (config show).",
    )
    sub = parser.add_subparsers(dest="config_command", required=True)
    example = sub.add_parser(
        "example",
        help="print a complete, commented configuration (every key, its default, its meaning)",
        description="Print a complete, commented TOML configuration, generated from the "
        "settings themselves. Example: isales-watcher config example > config.toml. Exit "
        "codes: 0.",
    )
    example.set_defaults(handler=_example)
    show = sub.add_parser(
        "show",
        parents=[config],
        help="print the configuration in effect, secrets masked, each value's source",
        description="Print the configuration in effect (the file, with ISALES_WATCHER_* "
        "variables over it) with secrets masked and where each value came from. Example: "
        "isales-watcher config show --config /etc/isales-watcher/config.toml. Exit codes: 0 "
        "shown, 78 a configuration error (named, with its line or variable).",
    )
    show.set_defaults(handler=_show)
