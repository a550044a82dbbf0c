"""Where each configuration value comes from, and what to say when one is wrong.

The configuration is two layers: the TOML file, and ``ISALES_WATCHER_<SECTION>__<KEY>``
variables over it, key by key. This module reads both into one mapping and remembers each
value's place (``config.toml:12`` or the variable's name), so that an error names the line or
the variable, suggests the nearest known key, and leaves out pydantic's internal words. It knows
the settings only through the model class it is given.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from watcher.errors import ConfigError

__all__ = (
    "ENV_PREFIX",
    "Key",
    "Layers",
    "entry_model",
    "explain",
    "field_model",
    "read_layers",
)

ENV_PREFIX = "ISALES_WATCHER_"
Key = tuple[str | int, ...]
_MAX_PROBLEMS = 10
_SECRET_NAMES = re.compile(r"(access_key|secret_key|password|passphrase)$")
_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*=")
_TOML_PLACE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_NAMED_KEY = re.compile(r"^([a-z_]+): ")


@dataclass(frozen=True, slots=True)
class Layers:
    """The file with the environment merged over it, and where each value came from."""

    path: Path
    data: dict[str, Any]
    origins: dict[Key, str]  # "config.toml:12" or "$ISALES_WATCHER_DAEMON__SETTLE_S"
    unknown: tuple[str, ...]  # one warning for each variable that names no setting

    def origin(self, key: Key) -> str:
        """The place of ``key``, or of the nearest table around it; the file when unknown."""
        for end in range(len(key), 0, -1):
            found = self.origins.get(key[:end])
            if found is not None:
                return found
        return str(self.path)

    def given(self, key: Key) -> Any:
        """The value as written (before checks), or None."""
        value: Any = self.data
        for part in key:
            if isinstance(part, int):
                value = value[part] if isinstance(value, list) and part < len(value) else None
            else:
                value = value.get(part) if isinstance(value, dict) else None
        return value


def field_model(field: FieldInfo) -> type[BaseModel] | None:
    """The section model of a field (``X`` or ``X | None``), or None for a plain value."""
    return _model_among(_alternatives(field.annotation))


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    """``X | None`` as (X, None); anything else as itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _model_among(kinds: tuple[Any, ...]) -> type[BaseModel] | None:
    for kind in kinds:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None


def entry_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of each entry of a list of tables (``tuple[X, ...]``), or None."""
    if typing.get_origin(field.annotation) not in (tuple, list):
        return None
    return _model_among(typing.get_args(field.annotation))


def _is_complex(field: FieldInfo) -> bool:
    """A value an environment variable gives as JSON: a section, a list or a table."""
    kinds = _alternatives(field.annotation)
    return field_model(field) is not None or any(
        typing.get_origin(kind) in (list, tuple, set, frozenset, dict) for kind in kinds
    )


def _env_name(key: Key) -> str:
    """The variable that sets ``key``: ``ISALES_WATCHER_DAEMON__SETTLE_S``."""
    return ENV_PREFIX + "__".join(str(part) for part in key).upper()


def _fields(model: type[BaseModel], key: Key = ()) -> Iterator[tuple[Key, FieldInfo]]:
    """Every field and section of ``model``, depth first."""
    for name, field in model.model_fields.items():
        yield (*key, name), field
        inner = field_model(field)
        if inner is not None:
            yield from _fields(inner, (*key, name))


def _walk(model: type[BaseModel], key: Key) -> tuple[FieldInfo | None, type[BaseModel] | None]:
    """The field at ``key``, and the model of what lies below it (None: a plain value)."""
    field: FieldInfo | None = None
    current: type[BaseModel] | None = model
    for part in key:
        if isinstance(part, int):  # an entry of a list of tables
            current = entry_model(field) if field is not None else None
            continue
        field = current.model_fields.get(part) if current is not None else None
        if field is None:
            return None, None
        current = field_model(field)
    return field, current


def _field_at(model: type[BaseModel], key: Key) -> FieldInfo | None:
    return _walk(model, key)[0]


def key_lines(text: str) -> dict[Key, int]:
    """The line of each table and key of a TOML text (a scan: tomllib keeps no positions).

    ``[[routes]]`` tables are numbered from 0 in the order they appear, as the parsed list is.
    """
    lines: dict[Key, int] = {}
    table: Key = ()
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if match := _ARRAY_TABLE.match(line):
            counts[match[1]] = counts.get(match[1], -1) + 1
            table = (*match[1].split("."), counts[match[1]])
        elif match := _TABLE.match(line):
            table = tuple(match[1].split("."))
        elif match := _KEY.match(line):
            lines.setdefault((*table, *(p.strip() for p in match[1].split("."))), number)
            continue
        else:
            continue
        lines.setdefault(table, number)
    return lines


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file (use --config FILE)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give the configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file in UTF-8") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        place = _TOML_PLACE.search(message)
        where = f"{path}:{place[1]}" if place else str(path)
        raise ConfigError(f"{where}: not valid TOML: {_TOML_PLACE.sub('', message)}") from None


def _decode(name: str, raw: str, field: FieldInfo, key: Key) -> Any:
    """A variable's value: JSON for a section, list or table; the text itself otherwise."""
    if not _is_complex(field):
        return raw
    try:
        return json.loads(raw)
    except ValueError as exc:
        shape = "an object" if field_model(field) is not None else "an array"
        raise ConfigError(
            f"${name}: not valid JSON ({getattr(exc, 'msg', exc)}); {_label(key, {})} takes "
            f"{shape}, in JSON"
        ) from None


def _unknown_variable(name: str, key: Key, model: type[BaseModel]) -> str:
    whole = model.model_fields.get(str(key[0]))
    if len(key) > 1 and whole is not None and entry_model(whole) is not None:
        hint = f"; give {_env_name(key[:1])} the whole list instead, as a JSON array of tables"
    else:
        known = [_env_name(k) for k, _ in _fields(model)]
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else " (see: isales-watcher config example)"
    return f"{name} names no setting and is ignored{hint}"


def _set(data: dict[str, Any], key: Key, value: Any) -> None:
    """Put ``value`` at ``key``; a table given over a table is merged key by key."""
    *parents, last = key
    table = data
    for part in parents:
        inner = table.get(str(part))
        if not isinstance(inner, dict):
            inner = table[str(part)] = {}
        table = inner
    if isinstance(value, dict) and isinstance(table.get(str(last)), dict):
        for name, item in value.items():
            _set(table[str(last)], (name,), item)
    else:
        table[str(last)] = value


def _environment(
    data: dict[str, Any],
    origins: dict[Key, str],
    environ: Mapping[str, str],
    model: type[BaseModel],
) -> list[str]:
    """Merge every ``ISALES_WATCHER_*`` variable into ``data``; the warnings for unknown ones."""
    unknown = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        key: Key = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        field = _field_at(model, key)
        if field is None:
            unknown.append(_unknown_variable(name, key, model))
            continue
        _set(data, key, _decode(name, environ[name], field, key))
        for known in [k for k in origins if k[: len(key)] == key]:
            del origins[known]  # the file's lines below it no longer count
        origins[key] = f"${name}"
    return unknown


def read_layers(path: Path, model: type[BaseModel], environ: Mapping[str, str]) -> Layers:
    """Read the file and the environment into one mapping, remembering where values came from.

    Raises:
        ConfigError: the file cannot be read, is not TOML, holds ``[routes]`` as one table, or
            a variable holds JSON that does not parse.
    """
    data, text = _read_toml(path)
    origins: dict[Key, str] = {key: f"{path}:{line}" for key, line in key_lines(text).items()}
    if isinstance(data.get("routes"), dict):
        raise ConfigError(
            f"{origins.get(('routes',), path)}: [routes] is one table; write [[routes]] (an "
            "array of tables), one per inbox"
        )
    unknown = _environment(data, origins, environ, model)
    return Layers(path, data, origins, tuple(unknown))


def _label(key: Key, data: Mapping[str, Any]) -> str:
    """``isales.vdn_id``; in a route, ``route 2 (spring): schedule``."""
    if len(key) >= 2 and key[0] == "routes" and isinstance(key[1], int):
        routes = data.get("routes")
        entry = routes[key[1]] if isinstance(routes, list) and key[1] < len(routes) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        route = f"route {key[1] + 1}" + (f" ({name})" if isinstance(name, str) else "")
        return ": ".join([route, ".".join(str(part) for part in key[2:])]).rstrip(": ")
    return ".".join(str(part) for part in key)


def _is_secret(key: Key, model: type[BaseModel]) -> bool:
    field = _field_at(model, key)
    kinds = _alternatives(field.annotation) if field is not None else ()
    return SecretStr in kinds or bool(key and _SECRET_NAMES.search(str(key[-1])))


def _nearest(key: Key, model: type[BaseModel]) -> str | None:
    """The known key beside ``key`` whose name is nearest to its name."""
    inner = _walk(model, key[:-1])[1]
    known = list(inner.model_fields) if inner is not None else []
    close = difflib.get_close_matches(str(key[-1]), known, n=1, cutoff=0.6)
    return close[0] if close else None


def _extra(key: Key, model: type[BaseModel], layers: Layers) -> str:
    """An unknown key or section, with the nearest known one."""
    close = _nearest(key, model)
    if len(key) == 1 and isinstance(layers.data.get(str(key[0])), dict):
        hint = f"; did you mean [{close}]?" if close else ""
        return f"[{key[0]}] is not a section of the configuration{hint}"
    hint = f"; did you mean {close}?" if close else ""
    return f"{_label(key, layers.data)} is not a setting{hint}"


def _shown(value: Any) -> str:
    return repr(value[:40] if isinstance(value, str) else value)


def _problem(item: Any, layers: Layers, model: type[BaseModel]) -> str:
    key: Key = tuple(item["loc"])
    message = str(item["msg"]).removeprefix("Value error, ")
    kind = item["type"]
    if kind == "extra_forbidden":
        return f"{layers.origin(key)}: {_extra(key, model, layers)}"
    if key == ("routes",) and kind in ("missing", "too_short"):
        return (
            f"{layers.origin(key)}: no route: add a [[routes]] table (name, inbox, campaign_id) "
            "for each inbox"
        )
    named = _NAMED_KEY.match(message)
    if named and kind == "value_error" and key and _is_field(model, key, named[1]):
        # A check of a whole section that names its key: "base_url: plain http:// ..."
        key, message = (*key, named[1]), message[named.end() :]
    label = _label(key, layers.data)
    if kind == "missing":
        section = _walk(model, key)[1] is not None
        return f"{layers.origin(key)}: {f'[{label}]' if section else label} is required"
    if not _is_secret(key, model) and isinstance(item.get("input"), str | int | float):
        message = f"{message} (got {_shown(item['input'])})"
    return f"{layers.origin(key)}: {label}: {message}" if label else f"{layers.path}: {message}"


def _is_field(model: type[BaseModel], key: Key, name: str) -> bool:
    inner = _walk(model, key)[1]
    return inner is not None and name in inner.model_fields


def _is_noise(item: Any, items: list[Any], model: type[BaseModel]) -> bool:
    """An error that only repeats another one more plainly said."""
    key = tuple(item["loc"])
    if key == ("routes",) and item["type"] == "too_short":
        # "Tuple should have at least 1 item": a route was refused, and is named.
        return any(len(i["loc"]) > 1 and i["loc"][0] == "routes" for i in items)
    if item["type"] == "missing":
        # "vdn_id is required" beside "vdn_idd is not a setting; did you mean vdn_id?"
        return any(
            i["type"] == "extra_forbidden"
            and tuple(i["loc"][:-1]) == key[:-1]
            and _nearest(tuple(i["loc"]), model) == key[-1]
            for i in items
        )
    return False


def explain(error: ValidationError, layers: Layers, model: type[BaseModel]) -> str:
    """One line for each problem: where (file:line or variable), which key, what is wrong."""
    items = error.errors()
    problems = [
        _problem(item, layers, model) for item in items if not _is_noise(item, items, model)
    ]
    if len(problems) > _MAX_PROBLEMS:
        more = len(problems) - _MAX_PROBLEMS
        problems = [*problems[:_MAX_PROBLEMS], f"... and {more} more problems"]
    return "\n".join(problems)
