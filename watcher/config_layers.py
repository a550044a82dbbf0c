"""The configuration's two sources for pydantic-settings, and where each value came from.

The configuration is the TOML file with ``ISALES_WATCHER_<SECTION>__<KEY>`` variables over it.
pydantic-settings merges the two and decodes the variables (``__`` for nesting, JSON for a
section, a list or a table); this module gives it its sources: :class:`FileSource`, the file the
command was given, and :class:`EnvironmentSource`, pydantic-settings' own environment source told
only the variables that name a setting (the others are warned about, not refused). It remembers
each value's place (``config.toml:12`` or the variable's name), so that an error names the line
or the variable, suggests the nearest known key, and leaves out pydantic's internal words. It
knows the settings only through the model class it is given.
"""

from __future__ import annotations

import difflib
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
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from watcher.errors import ConfigError

__all__ = (
    "ENV_PREFIX",
    "EnvironmentSource",
    "FileSource",
    "Key",
    "Layers",
    "VariableError",
    "entry_model",
    "explain",
    "field_model",
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
# pydantic's kinds of error for a text where a section or a list is needed.
_NOT_A_TABLE = frozenset({"model_type", "dict_type", "tuple_type", "list_type"})


class VariableError(ValueError):
    """A variable whose value pydantic-settings could not decode, said in one line."""


class FileSource(PydanticBaseSettingsSource):
    """The TOML file a command was given, read once, with the line of each table and key."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        """Read ``path``.

        Raises:
            ConfigError: the file cannot be read, is not TOML, or holds ``[routes]`` as one table.
        """
        super().__init__(settings_cls)
        self.path = path
        self.data, text = _read_toml(path)
        self.lines = key_lines(text)
        if isinstance(self.data.get("routes"), dict):
            line = self.lines.get(("routes",))
            raise ConfigError(
                f"{f'{path}:{line}' if line else path}: [routes] is one table; write [[routes]] "
                "(an array of tables), one per inbox"
            )

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.data


class EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source, told only the variables that name a setting.

    A variable that names none (``ISALES_WATCHER_DEAMON__SETTLE_S``) is left out and said in
    :attr:`unknown`, so that a typo is warned about instead of refusing the configuration.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.keys, self.unknown = _sort_variables(environ, settings_cls)
        self.env_vars = {self._apply_case_sensitive(name): environ[name] for name in self.keys}
        self.values: dict[str, Any] = {}  # what the variables gave, decoded

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as exc:
            name, key = self._variable(field_name, value)
            raise VariableError(
                f"${name}: not valid JSON ({getattr(exc, 'msg', exc)}); {_label(key)} takes "
                f"{_shape(self.settings_cls, key)}, in JSON"
            ) from None

    def _variable(self, field_name: str, value: Any) -> tuple[str, Key]:
        """The variable that holds ``value`` for a key named ``field_name``."""
        for name, key in self.keys.items():
            raw = self.env_vars.get(self._apply_case_sensitive(name))
            if key[-1] == field_name.lower() and raw == value:
                return name, key
        return ENV_PREFIX + field_name.upper(), (field_name,)

    def __call__(self) -> dict[str, Any]:
        self.values = super().__call__()
        return self.values


@dataclass(frozen=True, slots=True)
class Layers:
    """The file and the variables over it, as pydantic-settings had them, and each value's place."""

    path: Path
    file: Mapping[str, Any]  # the TOML file as read
    environment: Mapping[str, Any]  # the variables, as pydantic-settings decoded them
    origins: dict[Key, str]  # "config.toml:12" or "$ISALES_WATCHER_DAEMON__SETTLE_S"

    @classmethod
    def of(cls, file: FileSource, environment: EnvironmentSource) -> Layers:
        """The places of the values the two sources gave (after the environment was read)."""
        origins = {key: f"{file.path}:{line}" for key, line in file.lines.items()}
        for name, key in environment.keys.items():  # by name: a table before the keys in it
            # A table given in JSON is merged over the file's key by key: the keys it gives are
            # its own, the others stay the file's (or defaults).
            for inner in _leaves(_at(environment.values, key)):
                _claim(origins, (*key, *inner), f"${name}")
        return cls(file.path, file.data, environment.values, origins)

    def origin(self, key: Key) -> str:
        """The place of ``key``, or of the nearest table around it; the file when unknown."""
        for end in range(len(key), 0, -1):
            found = self.origins.get(key[:end])
            if found is not None:
                return found
        return str(self.path)

    def given(self, key: Key) -> Any:
        """The value as given (before checks) in the file or the variable it came from, or None."""
        return _at(self.environment if self.origin(key).startswith("$") else self.file, key)


def _at(data: Mapping[str, Any], key: Key) -> Any:
    """The value at ``key`` in ``data``, or None."""
    value: Any = data
    for part in key:
        if isinstance(part, int):
            value = value[part] if isinstance(value, list) and part < len(value) else None
        else:
            value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _leaves(value: Any) -> Iterator[Key]:
    """Where the values within ``value`` are, below it: ``()`` for a value that is no table."""
    if not isinstance(value, dict):
        yield ()
        return
    for name, inner in value.items():
        yield from ((name, *below) for below in _leaves(inner))


def _claim(origins: dict[Key, str], key: Key, origin: str) -> None:
    """``key`` came from ``origin``, and so did everything below it."""
    for known in [k for k in origins if k[: len(key)] == key]:
        del origins[known]
    origins[key] = origin


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


def _unknown_variable(name: str, key: Key, model: type[BaseModel]) -> str:
    whole = model.model_fields.get(str(key[0]))
    if len(key) > 1 and whole is not None and entry_model(whole) is not None:
        hint = f"; give {_env_name(key[:1])} the whole list instead, as a JSON array of tables"
    else:
        known = [_env_name(k) for k, _ in _fields(model)]
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else " (see: isales-watcher config example)"
    return f"{name} names no setting and is ignored{hint}"


def _sort_variables(
    environ: Mapping[str, str], model: type[BaseModel]
) -> tuple[dict[str, Key], tuple[str, ...]]:
    """Each variable of ours that names a setting, with its key; a warning for each other one."""
    known: dict[str, Key] = {}
    unknown = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        key: Key = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        if _field_at(model, key) is None:
            unknown.append(_unknown_variable(name, key, model))
        else:
            known[name] = key
    return known, tuple(unknown)


def _label(key: Key, layers: Layers | None = None) -> str:
    """``isales.vdn_id``; in a route, ``route 2 (spring): schedule``."""
    if len(key) >= 2 and key[0] == "routes" and isinstance(key[1], int):
        name = layers.given((*key[:2], "name")) if layers is not None else None
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
    if len(key) == 1 and isinstance(layers.given(key), dict):
        hint = f"; did you mean [{close}]?" if close else ""
        return f"[{key[0]}] is not a section of the configuration{hint}"
    hint = f"; did you mean {close}?" if close else ""
    return f"{_label(key, layers)} is not a setting{hint}"


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
    label = _label(key, layers)
    if kind in _NOT_A_TABLE and layers.origin(key).startswith("$"):
        # The text of a variable that pydantic-settings did not decode where JSON was needed.
        shown = _shown(item["input"])
        return f"{layers.origin(key)}: {label} takes {_shape(model, key)}, in JSON (got {shown})"
    if kind == "missing":
        section = _walk(model, key)[1] is not None
        return f"{layers.origin(key)}: {f'[{label}]' if section else label} is required"
    if not _is_secret(key, model) and isinstance(item.get("input"), str | int | float):
        message = f"{message} (got {_shown(item['input'])})"
    return f"{layers.origin(key)}: {label}: {message}" if label else f"{layers.path}: {message}"


def _shape(model: type[BaseModel], key: Key) -> str:
    """What a section, a list or a list of tables at ``key`` is in JSON."""
    return "an object" if _walk(model, key)[1] is not None else "an array"


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
