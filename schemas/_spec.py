"""What a schema is to the pipeline: a pydantic model, a version, and the prompt that asks
for it, plus the strict JSON Schema that the providers' structured-output modes accept.

    >>> from schemas import get_schema
    >>> spec = get_schema("chunk_summary")
    >>> spec.json_schema()["additionalProperties"]
    False
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

# OpenAI's rule for `response_format.json_schema.name`; the registry key is sent as that name.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class SchemaSpec:
    """One extractable output: the registry key, its version, the model and its prompt.

    ``version`` is recorded with every result; bump it when the model changes so that
    outputs of different shapes are never mixed up in the results table.
    """

    name: str
    version: str
    model: type[BaseModel]
    instructions: str
    example: str = ""
    """A typical answer (JSON) for a chunk of a few hundred tokens. Never sent to a model:
    ``docroute plan`` sizes answers by it until the ledger has real ones. Checked against
    ``model`` here, so it cannot drift from the schema."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"schema name {self.name!r} must match {_NAME.pattern}")
        if not self.instructions.strip():
            raise ValueError(f"schema {self.name!r} needs instructions")
        if self.example:
            self.model.model_validate_json(self.example)  # a stale example fails at import

    def json_schema(self) -> dict[str, Any]:
        """The model's JSON Schema in the form OpenAI strict structured output accepts.

        Every object lists all of its properties in ``required`` and forbids additional
        ones, and no ``default`` is left anywhere. Returns a fresh copy on each call.
        """
        return copy.deepcopy(strict_json_schema(self.model))


@functools.lru_cache(maxsize=64)
def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Make ``model``'s pydantic JSON Schema strict (cached; callers must not mutate it)."""
    schema = model.model_json_schema()
    _make_strict(schema, root=schema)
    return schema


def _make_strict(node: Any, root: dict[str, Any]) -> None:
    """Walk ``node`` in place: close every object, require every property, drop defaults."""
    if isinstance(node, list):
        for item in node:
            _make_strict(item, root)
        return
    if not isinstance(node, dict):
        return
    node.pop("default", None)
    if "$ref" in node and len(node) > 1:
        _inline_ref(node, root)
    if node.get("type") == "object" or "properties" in node:
        if isinstance(node.get("additionalProperties"), dict):
            # A dict[str, X] field: strict mode has no open mappings, and closing it would
            # silently make it always empty. Model it as a list of objects instead.
            raise ValueError(f"strict mode cannot express an open mapping: {node}")
        node["additionalProperties"] = False
        node["required"] = list(node.get("properties", {}))
    for key, value in node.items():
        # Property names are user data, not schema keywords: never treat them as such.
        children = value.values() if key in ("properties", "$defs") else [value]
        for child in children:
            _make_strict(child, root)


def _inline_ref(node: dict[str, Any], root: dict[str, Any]) -> None:
    """Replace a ``$ref`` that has sibling keys (which strict mode rejects) by its target.

    The node's own keys (usually a field's ``description``) win over the target's.
    """
    ref = node.pop("$ref")
    if not ref.startswith("#/"):
        raise ValueError(f"cannot resolve non-local $ref {ref!r}")
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part]
    for key, value in copy.deepcopy(target).items():
        node.setdefault(key, value)
