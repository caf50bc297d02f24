"""The output schemas users extract, and the registry that names them.

    spec = get_schema("chunk_summary")
    response_format = {"type": "json_schema",
                       "json_schema": {"name": spec.name, "strict": True,
                                       "schema": spec.json_schema()}}
    messages = [{"role": "system", "content": spec.instructions}, ...]
    answer = spec.model.model_validate_json(reply_text)   # always re-validate

Adding a schema: write one module with a model and a ``SPEC``, and add it to ``SCHEMAS``.
"""

from __future__ import annotations

from schemas import chunk_summary, contract_clauses
from schemas._spec import SchemaSpec
from schemas.chunk_summary import ChunkSummary, Entity
from schemas.contract_clauses import Amount, Clause, ContractClauses, Obligation

SCHEMAS: dict[str, SchemaSpec] = {
    spec.name: spec for spec in (chunk_summary.SPEC, contract_clauses.SPEC)
}


def get_schema(name: str) -> SchemaSpec:
    """The registered schema called ``name``; a KeyError that lists the known names if none."""
    try:
        return SCHEMAS[name]
    except KeyError:
        known = ", ".join(sorted(SCHEMAS))
        raise KeyError(f"unknown schema {name!r}; known schemas: {known}") from None


__all__ = [
    "SCHEMAS",
    "Amount",
    "ChunkSummary",
    "Clause",
    "ContractClauses",
    "Entity",
    "Obligation",
    "SchemaSpec",
    "get_schema",
]
