"""Instances of a JSON schema built from a text: the simulator's stand-in for a model.

A schema is compiled once into a tree of small generator functions (``compiled_schema``
caches by the schema's JSON), then each request only walks that tree:

    >>> schema = {"type": "object", "additionalProperties": False,
    ...           "required": ["summary", "year"], "properties": {
    ...               "summary": {"type": "string"},
    ...               "year": {"type": "integer", "minimum": 2000}}}
    >>> compiled_schema(schema).instance("Rates rose in 1999. Then fell.")
    {'summary': 'Rates rose in 1999. Then fell.', 'year': 2000}

Supported: ``type`` (a name or a list), objects (``properties``, ``required``,
``additionalProperties``), ``$ref`` into ``$defs``/``definitions`` (recursion included),
``anyOf``/``oneOf``/``allOf``, ``enum``/``const``, arrays (``items``, ``prefixItems``,
``minItems``/``maxItems``, ``uniqueItems``), strings (``format``, ``minLength``/``maxLength``),
integers and numbers (``minimum``/``maximum``, exclusive bounds, ``multipleOf``), booleans,
null. Not honoured: ``pattern``, ``not``, ``if``/``then``/``else``, ``patternProperties``.

Values come from the text by property name (see ``fillers.py``). A nullable value is null
below depth ``SHALLOW`` and, for dates, when the text has none.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import fillers
from .hints import TextHints, hints_for

#: Below this nesting depth, nullable values are null and lists get their minimum length.
SHALLOW = 8
_MAX_DEPTH = 64
_ANNOTATIONS = frozenset(("description", "title", "default", "examples", "$comment", "deprecated"))
_ALL_TYPES = frozenset(("object", "array", "string", "number", "integer", "boolean", "null"))
_NO_VALUE = object()


class SchemaError(ValueError):
    """The schema cannot be answered: not an object, a dangling ``$ref``, endless recursion…"""


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where a value goes: nearest property name, index in the nearest list, depth."""

    name: str = ""
    index: int = 0
    depth: int = 0

    def child(self, name: str) -> _Slot:
        return _Slot(name, self.index, _deeper(self.depth))

    def item(self, index: int) -> _Slot:
        return _Slot(self.name, index, _deeper(self.depth))


def _deeper(depth: int) -> int:
    if depth >= _MAX_DEPTH:
        raise SchemaError("the schema's recursion does not terminate")
    return depth + 1


Generator = Callable[[TextHints, _Slot], Any]


class CompiledSchema:
    """A schema made into generators: ``instance`` fits it, ``invalid_instance`` does not."""

    def __init__(self, schema: Any) -> None:
        if not isinstance(schema, dict):
            raise SchemaError("the schema must be a JSON object")
        self.schema = schema
        self._refs: dict[str, Generator] = {}
        self._generate = self._compile(schema)

    def instance(self, text: str) -> Any:
        """A value valid against the schema, built from ``text``; the same text, the same value."""
        return self._generate(hints_for(text), _Slot())

    def invalid_instance(self, text: str, rng: random.Random) -> Any:
        """A JSON value that breaks the schema: a required property dropped or a wrong type.

        >>> s = compiled_schema({"type": "object", "properties": {"a": {"type": "string"}},
        ...                      "required": ["a"]})
        >>> s.invalid_instance("x", random.Random(1)) in ({}, {"a": {"unexpected": True}})
        True
        """
        value = self.instance(text)
        root = self._deref(self.schema)
        if not isinstance(value, dict) or not value:
            wrong = _wrong_value(self._json_types(root))
            return [value] if wrong is _NO_VALUE else wrong
        required = [k for k in root.get("required", ()) if k in value]
        if required and rng.random() < 0.5:
            return _without(value, rng.choice(required))
        key = rng.choice(list(value))
        wrong = _wrong_value(self._json_types(root.get("properties", {}).get(key, {})))
        if wrong is not _NO_VALUE:
            return {**value, key: wrong}
        return _without(value, required[0]) if required else [value]

    # -- compiling -------------------------------------------------------------------------

    def _compile(self, node: Any) -> Generator:
        if node is True or node == {}:
            return _any
        if not isinstance(node, dict):
            raise SchemaError(f"schema node {node!r} is not an object")
        if "$ref" in node:
            return self._compile_ref(node)
        if "const" in node:
            return _constant(node["const"])
        if "enum" in node:
            return _enum(node["enum"])
        if "allOf" in node:
            return self._compile(self._merge_all_of(node))
        for key in ("anyOf", "oneOf"):
            if key in node:
                return self._compile_union(node[key])
        kind = node.get("type", _infer_type(node))
        if isinstance(kind, list):
            return self._compile_union([{**node, "type": t} for t in kind])
        return self._compile_type(kind, node)

    def _compile_type(self, kind: Any, node: dict[str, Any]) -> Generator:
        if kind == "object":
            return self._compile_object(node)
        if kind == "array":
            return self._compile_array(node)
        if kind == "string":
            return _string(node)
        if kind in ("integer", "number"):
            return _number(node, integer=kind == "integer")
        if kind == "boolean":
            return lambda h, s: fillers.fill_boolean(h, s.name)
        if kind == "null":
            return _constant(None)
        if kind == "any":
            return _any
        raise SchemaError(f"unknown type {kind!r}")

    def _compile_ref(self, node: dict[str, Any]) -> Generator:
        ref = node["$ref"]
        if not _ANNOTATIONS.issuperset(node.keys() - {"$ref"}):
            return self._compile(self._deref(node))
        refs = self._refs
        if ref not in refs:
            refs[ref] = _any  # placeholder while compiling a recursive definition
            refs[ref] = self._compile(self._resolve(ref))
        return lambda h, s: refs[ref](h, s)

    def _compile_union(self, branches: Any) -> Generator:
        if not isinstance(branches, list) or not branches:
            raise SchemaError("anyOf/oneOf must be a non-empty list")
        resolved = [self._deref(b) for b in branches]
        nullable = any(_is_null(b) for b in resolved)
        main = next((i for i, b in enumerate(resolved) if not _is_null(b)), 0)
        generate = self._compile(branches[main])
        main_node = resolved[main] if isinstance(resolved[main], dict) else {}
        wants_date = nullable and main_node.get("format") in ("date", "date-time")

        def union(h: TextHints, s: _Slot) -> Any:
            if nullable and (s.depth >= SHALLOW or (wants_date and not h.dates)):
                return None
            return generate(h, s)

        return union

    def _compile_object(self, node: dict[str, Any]) -> Generator:
        properties = dict(node.get("properties") or {})
        extra = node.get("additionalProperties", True)
        for name in node.get("required", ()):
            properties.setdefault(name, extra if isinstance(extra, dict) else {})
        fields = [(name, self._compile(sub)) for name, sub in properties.items()]
        return lambda h, s: {name: gen(h, s.child(name)) for name, gen in fields}

    def _compile_array(self, node: dict[str, Any]) -> Generator:
        prefix_nodes, items = node.get("prefixItems", ()), node.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix_nodes, items = items, node.get("additionalItems", {})
        prefix = [self._compile(p) for p in prefix_nodes]
        item = None if items is False else self._compile(items)
        low = max(node.get("minItems", 0), len(prefix) if item is None else 0)
        high = len(prefix) if item is None else node.get("maxItems")
        unique = node.get("uniqueItems", False)

        def array(h: TextHints, s: _Slot) -> list[Any]:
            n = low if s.depth >= SHALLOW else max(low, fillers.default_count(h, s.name))
            n = n if high is None else min(n, high)
            out = [(prefix[i] if i < len(prefix) else item)(h, s.item(i)) for i in range(n)]  # type: ignore[misc]
            return _unique(out, low) if unique else out

        return array

    # -- resolving -------------------------------------------------------------------------

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $refs are supported, not {ref!r}")
        target: Any = self.schema
        for part in filter(None, ref[1:].split("/")):
            key = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or key not in target:
                raise SchemaError(f"$ref {ref!r} does not resolve")
            target = target[key]
        return target

    def _deref(self, node: Any) -> Any:
        for _ in range(_MAX_DEPTH):
            if not (isinstance(node, dict) and "$ref" in node):
                return node
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**self._resolve(node["$ref"]), **siblings}
        raise SchemaError("$ref chain does not end")

    def _merge_all_of(self, node: dict[str, Any]) -> dict[str, Any]:
        merged = {k: v for k, v in node.items() if k != "allOf"}
        for part in node["allOf"]:
            part = self._deref(part)
            part = self._merge_all_of(part) if "allOf" in part else part
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", ()), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def _json_types(self, node: Any) -> frozenset[str]:
        """The JSON types a value of ``node`` may have (all of them when unconstrained)."""
        node = self._deref(node)
        if not isinstance(node, dict):
            return _ALL_TYPES
        if "const" in node or "enum" in node:
            return frozenset(_type_of(v) for v in node.get("enum", [node.get("const")]))
        for key in ("anyOf", "oneOf"):
            if key in node:
                return frozenset().union(*(self._json_types(b) for b in node[key]))
        if "allOf" in node:
            return self._json_types(self._merge_all_of(node))
        kind = node.get("type", _infer_type(node))
        kinds = frozenset(kind if isinstance(kind, list) else [kind])
        if "any" in kinds:
            return _ALL_TYPES
        return kinds | {"integer"} if "number" in kinds else kinds


@lru_cache(maxsize=256)
def _compiled(schema_json: str) -> CompiledSchema:
    return CompiledSchema(json.loads(schema_json))


def compiled_schema(schema: Any) -> CompiledSchema:
    """The compiled form of ``schema``, cached by its JSON text (key order matters)."""
    return _compiled(json.dumps(schema, separators=(",", ":"), ensure_ascii=False))


# -- leaf generators -----------------------------------------------------------------------


def _any(h: TextHints, s: _Slot) -> Any:
    return fillers.fill_string(h, s.name, s.index)


def _constant(value: Any) -> Generator:
    return lambda h, s: value


def _enum(options: Any) -> Generator:
    if not isinstance(options, list) or not options:
        raise SchemaError("enum must be a non-empty list")
    return lambda h, s: fillers.choose_enum(h, options, s.name, s.index)


def _string(node: dict[str, Any]) -> Generator:
    fmt = node.get("format")
    low, high = node.get("minLength", 0), node.get("maxLength")

    def string(h: TextHints, s: _Slot) -> str:
        value = fmt and fillers.fill_format(h, fmt, s.name, s.index)
        return _fit_length(value or fillers.fill_string(h, s.name, s.index), low, high, h)

    return string


def _fit_length(value: str, low: int, high: int | None, h: TextHints) -> str:
    if len(value) < low:
        value = (value + " " + " ".join(h.text.split()))[:low].ljust(low, ".")
    return value if high is None else value[:high]


def _number(node: dict[str, Any], *, integer: bool) -> Generator:
    low, high = _bounds(node, integer=integer)
    step = node.get("multipleOf")

    def number(h: TextHints, s: _Slot) -> int | float:
        value = fillers.fill_number(h, s.name, s.index)
        value = round(value) if integer else float(value)
        if step:
            value = round(value / step) * step
        if low is not None and value < low:
            value = low if not step else low + (-low % step)
        if high is not None and value > high:
            value = high if not step else high - (high % step)
        return int(value) if integer else float(value)

    return number


def _bounds(node: dict[str, Any], *, integer: bool) -> tuple[float | None, float | None]:
    """Inclusive (low, high) from minimum/maximum and exclusive bounds (either draft)."""
    low, high = node.get("minimum"), node.get("maximum")
    ex_low, ex_high = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if isinstance(ex_low, bool):  # draft 4: a flag on minimum
        ex_low, low = (low, None) if ex_low else (None, low)
    if isinstance(ex_high, bool):
        ex_high, high = (high, None) if ex_high else (None, high)
    if ex_low is not None:
        bound = math.floor(ex_low) + 1 if integer else math.nextafter(ex_low, math.inf)
        low = bound if low is None else max(low, bound)
    if ex_high is not None:
        bound = math.ceil(ex_high) - 1 if integer else math.nextafter(ex_high, -math.inf)
        high = bound if high is None else min(high, bound)
    if integer:
        low = None if low is None else math.ceil(low)
        high = None if high is None else math.floor(high)
    return low, high


# -- small helpers -------------------------------------------------------------------------


def _infer_type(node: dict[str, Any]) -> str:
    if "properties" in node or "required" in node or "additionalProperties" in node:
        return "object"
    if "items" in node or "prefixItems" in node:
        return "array"
    return "any" if not node.keys() - _ANNOTATIONS else "string"


def _is_null(node: Any) -> bool:
    return isinstance(node, dict) and (node.get("type") == "null" or node.get("const", 0) is None)


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "any")


def _wrong_value(types: frozenset[str]) -> Any:
    """A value of a JSON type outside ``types``, or ``_NO_VALUE`` if every type is allowed."""
    if "object" not in types:
        return {"unexpected": True}
    if "string" not in types:
        return "unexpected"
    if "array" not in types:
        return ["unexpected"]
    return _NO_VALUE


def _without(value: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k != key}


def _unique(items: list[Any], low: int) -> list[Any]:
    """Drop repeats, unless that would leave fewer than ``low`` items."""
    seen: dict[str, Any] = {}
    for item in items:
        seen.setdefault(json.dumps(item, sort_keys=True), item)
    distinct = list(seen.values())
    return distinct if len(distinct) >= low else items
