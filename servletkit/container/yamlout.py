"""Write homeserver.yaml fragments (no YAML library needed: the container prints, never parses).

Mappings become block mappings, lists block sequences, strings double-quoted
(JSON string syntax, which YAML accepts), numbers and booleans plain.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def dump_yaml(data: Mapping[str, Any]) -> str:
    """The YAML text of ``data`` (a mapping of str keys to str/int/float/bool/list/mapping)."""
    return "\n".join(_lines(data, 0)) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as YAML: {value!r}")


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        lines = []
        for key, item in value.items():
            if isinstance(item, Mapping | list | tuple) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(_lines(item, indent + 2))
            else:
                lines.append(f"{pad}{key}: {_empty(item) or _scalar(item)}")
        return lines
    if isinstance(value, Sequence) and not isinstance(value, str):
        lines = []
        for item in value:
            nested = _lines(item, indent + 2)
            if isinstance(item, Mapping | list | tuple) and item:
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_empty(item) or _scalar(item)}")
        return lines
    return [pad + _scalar(value)]


def _empty(value: Any) -> str:
    if isinstance(value, Mapping) and not value:
        return "{}"
    if isinstance(value, list | tuple) and not value:
        return "[]"
    return ""
