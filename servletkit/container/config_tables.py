"""Building a config section (a frozen attrs class) from a TOML table.

Every key is checked against the class's fields and every value against its
type hint; a mistake is a :class:`ConfigError` naming the file, the dotted key,
what was expected and what was got.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs


class ConfigError(Exception):
    """The config file is unreadable or invalid. ``key`` is the dotted path of the culprit."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        where = f"{path}: {key}" if key else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.key = key
        self.problem = problem


class InvalidValue(ValueError):
    """A validator's complaint about one field; :func:`build_section` names the key."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def build_section(cls: type, table: Any, path: Path, key: str) -> Any:
    """Build the attrs class ``cls`` from a TOML table, checking every key and type."""
    if not isinstance(table, Mapping):
        raise ConfigError(path, key, f"must be a table, got {kind_of(table)}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in attrs.fields(cls)}
    values = {}
    for name, value in table.items():
        if name not in fields:
            known = ", ".join(fields) or "none"
            raise ConfigError(path, f"{key}.{name}", f"unknown key (known keys: {known})")
        values[name] = _check(hints[name], value, path, f"{key}.{name}")
    for name, field in fields.items():
        if field.default is attrs.NOTHING and name not in values:
            raise ConfigError(path, f"{key}.{name}", "is required but missing")
    try:
        return cls(**values)
    except InvalidValue as exc:
        raise ConfigError(path, f"{key}.{exc.field}", exc.problem) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, key, str(exc)) from None


def _check(hint: Any, value: Any, path: Path, key: str) -> Any:
    """Return ``value`` converted to ``hint``, or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if attrs.has(hint):
        return build_section(hint, value, path, key)
    if origin is Literal:
        if value not in args:
            choices = " or ".join(repr(a) for a in args)
            raise ConfigError(path, key, f"must be {choices}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _check(option, value, path, key)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(path, key, "; ".join(errors))
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(path, key, f"must be an array, got {kind_of(value)}")
        item = args[0] if args else Any
        items = [_check(item, v, path, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(path, key, f"must be a table, got {kind_of(value)}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, key, f"must be a number, got {kind_of(value)}")
        return float(value)
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(path, key, f"must be a string (a path), got {kind_of(value)}")
        return Path(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(path, key, f"must be {_NAMES[hint]}, got {kind_of(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in a section class


_NAMES = {int: "an integer", str: "a string", bool: "true or false", float: "a number"}


def kind_of(value: Any) -> str:
    """How a value read from TOML is named in an error message."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{value!r} ({type(value).__name__})"
