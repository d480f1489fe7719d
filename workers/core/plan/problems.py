"""Plan problems: pydantic errors turned into located, readable ``(location, message)`` pairs."""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ValidationError,
)

from workers.core.plan.models import MAX_LISTED_PROBLEMS
from workers.errors import PlanError

_MISSING = object()


# -- error reporting -----------------------------------------------------------------------

_KIND = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _kind(value: object) -> str:
    return _KIND.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the interesting type."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the model found at ``loc`` inside ``model`` (for suggestions)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) in (list, tuple, dict):
            current = get_args(current)[-1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _problems_from(
    error: ValidationError, prefix: str, model: type[BaseModel]
) -> list[tuple[str, str]]:
    """Turn pydantic's errors into ``(location, message)`` pairs a person can act on."""
    problems: list[tuple[str, str]] = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        kind, value = err["type"], err.get("input")
        if kind == "extra_forbidden":
            key = loc[-1]
            message = f"unknown field {str(key)!r}"
            close = difflib.get_close_matches(str(key), _fields_at(model, loc[:-1]), n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
            problems.append((_join(prefix, loc[:-1]), message))
            continue
        if kind == "missing":
            problems.append((_join(prefix, loc[:-1]), f"missing required field {loc[-1]!r}"))
            continue
        if kind in (
            "string_type",
            "int_type",
            "float_type",
            "dict_type",
            "list_type",
            "model_type",
        ):
            wanted = {
                "model_type": "a mapping",
                "string_type": "a string",
                "int_type": "an integer",
                "float_type": "a number",
                "dict_type": "a mapping",
                "list_type": "a list",
            }[kind]
            message = f"expected {wanted}, got {_kind(value)} {_short(value)}"
            if isinstance(value, bool) and kind == "string_type":
                message += " (YAML reads yes/no/on/off/true/false as booleans: quote it)"
            problems.append((_join(prefix, loc), message))
            continue
        if kind == "tuple_type":
            message = f"expected a list, got {_kind(value)} {_short(value)}"
            problems.append((_join(prefix, loc), message))
            continue
        message = err["msg"].removeprefix("Value error, ")
        if kind not in ("value_error", "assertion_error") and not isinstance(value, Mapping):
            message += f" (got {_short(value)})"
        problems.append((_join(prefix, loc), message))
    return problems


def _format(source: str, problems: list[tuple[str, str]]) -> str:
    lines = [
        f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}"
        for loc, msg in problems[:MAX_LISTED_PROBLEMS]
    ]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"{source}: ... and {len(problems) - MAX_LISTED_PROBLEMS} more problems")
    return "\n".join(lines)


def _fail(source: str, location: str, message: str) -> PlanError:
    return PlanError(_format(source, [(location, message)]), [(location, message)])
