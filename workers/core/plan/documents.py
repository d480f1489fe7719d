"""Plan documents: YAML/JSON text or bytes to a mapping, safely.

Refuses oversized input, duplicate keys and alias bombs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from workers.core.plan.models import MAX_PLAN_BYTES, MAX_PLAN_NODES
from workers.core.plan.problems import _fail, _kind

# -- documents -----------------------------------------------------------------------------


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """``yaml.safe_load`` semantics (libyaml when available) that refuses duplicate keys."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` keys may be overridden: that is their purpose
                key: Any
                if isinstance(key_node, yaml.ScalarNode):
                    # Comparing the resolved tag and text is enough, and much cheaper than
                    # constructing every key twice on a 10,000-feature plan.
                    key = (key_node.tag, key_node.value)
                else:
                    key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key: the base class explains it
                    continue
                if duplicate:
                    shown = key[1] if isinstance(key_node, yaml.ScalarNode) else key
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {shown!r}",
                        key_node.start_mark,
                    )
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _check_expansion(doc: Any, source: str) -> None:
    """Refuse recursive or exponentially expanding YAML (aliases): linear, no recursion."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # containers on the current path
    stack: list[tuple[Any, bool]] = [(doc, False)]
    while stack:
        obj, finished = stack.pop()
        children = obj.values() if isinstance(obj, dict) else obj
        oid = id(obj)
        if finished:
            total = 1 + sum(sizes.get(id(c), 1) for c in children)
            if total > MAX_PLAN_NODES:
                raise _fail(
                    source,
                    "",
                    f"expands to more than {MAX_PLAN_NODES:,} values "
                    "(YAML aliases nested too deep?)",
                )
            sizes[oid] = total
            open_.discard(oid)
            continue
        if oid in sizes:
            continue
        if oid in open_:
            raise _fail(source, "", "a YAML alias refers to itself (recursive data)")
        open_.add(oid)
        stack.append((obj, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list)))


def _parse_text(text: str, source: str, fmt: Literal["json", "yaml"] | None) -> Any:
    if len(text) > MAX_PLAN_BYTES:
        raise _fail(source, "", f"larger than the {MAX_PLAN_BYTES // 2**20} MiB limit for a plan")
    if fmt == "json" or (fmt is None and text.lstrip().startswith("{")):
        try:
            return json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except RecursionError:
            raise _fail(source, "", "nested too deeply") from None
        except ValueError as exc:
            if fmt == "json":
                raise _fail(source, "", f"not valid JSON: {exc}") from None
            # fall through: `{name: x}` is a YAML flow mapping, not JSON
    try:
        # _Loader derives from (C)SafeLoader: only plain data, never Python objects.
        doc = yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise _fail(source, "", "nested too deeply") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split()).replace('in "<unicode string>", ', "at ")
        raise _fail(source, "", f"not valid YAML: {detail}") from None
    if isinstance(doc, dict | list):
        _check_expansion(doc, source)
    return doc


def _document(
    data: Mapping[str, Any] | str | bytes, source: str, fmt: Literal["json", "yaml"] | None
) -> Mapping[str, Any]:
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > MAX_PLAN_BYTES:
            raise _fail(
                source, "", f"larger than the {MAX_PLAN_BYTES // 2**20} MiB limit for a plan"
            )
        try:
            data = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _fail(source, "", f"not UTF-8 text ({exc.reason})") from None
    doc = _parse_text(data, source, fmt) if isinstance(data, str) else data
    if doc is None:
        raise _fail(source, "", "the plan is empty")
    if not isinstance(doc, Mapping):
        raise _fail(source, "", f"the top level must be a mapping, got {_kind(doc)}")
    return doc
