"""Builders for OpenAPI v3 schemas and CEL rules, the vocabulary of the CRD modules.

A CRD schema is plain JSON-shaped data; these functions only make it short to write
and hard to get wrong. Each returns a fresh ``dict`` (never a shared one), so a kind
module may add keys to what it gets back without touching another kind's schema.

Invariants the builders keep, because the apiserver demands them of a structural
schema or because admission cost estimation needs them:

- every object and array has a ``type``; arrays carry ``maxItems`` and strings
  ``maxLength`` wherever a CEL rule may look at them (CEL's cost estimate uses them);
- a CEL rule is written once, with the message a user sees on ``kubectl apply``;
- nothing here knows about vSphere or vmguard: the domain lives in :mod:`.fields`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Schema = dict[str, Any]
"""One OpenAPI v3 schema node, as the apiserver reads it from YAML."""


def cel_string(value: str) -> str:
    """``value`` as a CEL string literal: raw (``r'...'``) so regexes need no double escaping."""
    if "'" not in value and "\n" not in value:
        return "r'" + value + "'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rule(
    expression: str,
    message: str | None = None,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: str | None = None,
) -> Schema:
    """One ``x-kubernetes-validations`` entry.

    ``field_path`` (relative to the node the rule sits on, e.g. ``.selector``) makes the
    apiserver report the error at that field rather than at the node itself.
    """
    out: Schema = {"rule": expression}
    if message is not None:
        out["message"] = message
    if message_expression is not None:
        out["messageExpression"] = message_expression
    if field_path is not None:
        out["fieldPath"] = field_path
    if reason is not None:
        out["reason"] = reason
    return out


def _finish(
    node: Schema,
    description: str | None,
    default: Any,
    rules: Sequence[Schema] | None,
) -> Schema:
    # The description first: it is what a reader of the generated YAML looks for.
    out: Schema = {"description": description} if description else {}
    out.update(node)
    if default is not None:
        out["default"] = default
    if rules:
        out["x-kubernetes-validations"] = [dict(r) for r in rules]
    return out


def string(
    description: str | None = None,
    *,
    max_length: int,
    min_length: int | None = None,
    pattern: str | None = None,
    enum: Sequence[str] | None = None,
    fmt: str | None = None,
    default: str | None = None,
    rules: Sequence[Schema] | None = None,
) -> Schema:
    """A string; ``max_length`` is mandatory so no string is unbounded by accident."""
    node: Schema = {"type": "string"}
    if enum is not None:
        node["enum"] = list(enum)
    if fmt is not None:
        node["format"] = fmt
    if min_length is not None:
        node["minLength"] = min_length
    node["maxLength"] = max_length
    if pattern is not None:
        node["pattern"] = pattern
    return _finish(node, description, default, rules)


def enum(description: str, values: Sequence[str], *, default: str | None = None) -> Schema:
    """A string restricted to ``values`` (the apiserver lists them in its error)."""
    return string(description, enum=values, max_length=max(len(v) for v in values), default=default)


def integer(
    description: str | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    int64: bool = False,
    default: int | None = None,
    rules: Sequence[Schema] | None = None,
) -> Schema:
    node: Schema = {"type": "integer", "format": "int64" if int64 else "int32"}
    if minimum is not None:
        node["minimum"] = minimum
    if maximum is not None:
        node["maximum"] = maximum
    return _finish(node, description, default, rules)


def number(description: str | None = None, *, minimum: float | None = None) -> Schema:
    node: Schema = {"type": "number"}
    if minimum is not None:
        node["minimum"] = minimum
    return _finish(node, description, None, None)


def boolean(description: str | None = None, *, default: bool | None = None) -> Schema:
    return _finish({"type": "boolean"}, description, default, None)


def timestamp(description: str) -> Schema:
    """An RFC 3339 date-time, as ``metav1.Time`` serialises."""
    return _finish({"type": "string", "format": "date-time"}, description, None, None)


def obj(
    description: str | None = None,
    properties: Mapping[str, Schema] | None = None,
    *,
    required: Iterable[str] = (),
    rules: Sequence[Schema] | None = None,
    default: Mapping[str, Any] | None = None,
    min_properties: int | None = None,
) -> Schema:
    """An object with exactly ``properties`` (unknown fields are pruned by the apiserver)."""
    props = dict(properties or {})
    req = list(required)
    missing = [name for name in req if name not in props]
    if missing:
        raise ValueError(f"required fields without a schema: {missing}")
    node: Schema = {"type": "object"}
    if props:
        node["properties"] = props
    if req:
        node["required"] = req
    if min_properties is not None:
        node["minProperties"] = min_properties
    return _finish(node, description, dict(default) if default is not None else None, rules)


def array(
    description: str | None,
    items: Schema,
    *,
    max_items: int,
    min_items: int | None = None,
    list_type: str | None = None,
    map_keys: Sequence[str] | None = None,
    rules: Sequence[Schema] | None = None,
) -> Schema:
    """A list. ``list_type`` ``set`` rejects duplicates; ``map`` keys items by ``map_keys``."""
    node: Schema = {"type": "array", "items": items}
    if min_items is not None:
        node["minItems"] = min_items
    node["maxItems"] = max_items
    if list_type is not None:
        node["x-kubernetes-list-type"] = list_type
    if map_keys is not None:
        if list_type != "map":
            raise ValueError("map_keys needs list_type='map'")
        node["x-kubernetes-list-map-keys"] = list(map_keys)
    return _finish(node, description, None, rules)


def exactly_one(fields: Sequence[str], what: str) -> Schema:
    """A rule on an object: exactly one of ``fields`` is set."""
    count = " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields)
    names = ", ".join(fields)
    return rule(f"{count} == 1", f"{what}: set exactly one of {names}")


def immutable(what: str) -> Schema:
    """A transition rule: the node may not change once the object exists."""
    return rule("self == oldSelf", f"{what} is immutable")
