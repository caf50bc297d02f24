"""The schema registry, the strict JSON Schemas it hands to providers, the models' rules,
and the sample corpus that new users run first."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import SCHEMAS, ChunkSummary, ContractClauses, SchemaSpec, get_schema

CORPUS = Path(__file__).resolve().parent.parent / "examples" / "corpus"

# What OpenAI strict structured output accepts in a schema; anything else is rejected or,
# at best, ignored. Anthropic's output_config accepts a subset and folds the rest into
# descriptions, so a schema inside this set works on both.
ALLOWED_KEYWORDS = {
    "$defs", "$ref", "type", "properties", "required", "additionalProperties", "items",
    "anyOf", "enum", "const", "description", "title", "pattern", "format", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
}  # fmt: skip
ALLOWED_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4",
                   "ipv6", "uuid"}  # fmt: skip

VALID_SUMMARY: dict[str, Any] = {
    "summary": "Vantrel leases office space in Amsterdam from 1 March 2024.",
    "key_points": ["Rent is EUR 14,250 per month.", "The term is five years."],
    "entities": [
        {"name": "Vantrel Systems Europe B.V.", "kind": "organization"},
        {"name": "Amsterdam", "kind": "location"},
        {"name": "EUR 14,250", "kind": "money"},
        {"name": "GDPR", "kind": "law"},
    ],
    "language": "en",
}

VALID_CLAUSES: dict[str, Any] = {
    "clauses": [
        {
            "clause_type": "payment",
            "parties": ["Vantrel Systems, Inc.", "Harbor Point Credit Union"],
            "effective_date": "2024-07-01",
            "amounts": [{"value": 18500.0, "currency": "USD"}],
            "obligations": [
                {
                    "party": "Harbor Point Credit Union",
                    "action": "Pay each invoice within 30 days.",
                    "deadline": None,
                },
                {
                    "party": "Vantrel Systems, Inc.",
                    "action": "Deliver the migration plan.",
                    "deadline": "2024-08-15",
                },
            ],
            "summary": "The customer pays a monthly fee of USD 18,500.",
        },
        {
            "clause_type": "governing_law",
            "parties": [],
            "effective_date": None,
            "amounts": [],
            "obligations": [],
            "summary": "Maine law governs the agreement.",
        },
    ]
}


def _walk(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path; property names are not mistaken for keywords."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}/{i}")
    elif isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for name, child in value.items():
                    yield from _walk(child, f"{path}/{key}/{name}")
            elif isinstance(value, (dict, list)):
                yield from _walk(value, f"{path}/{key}")


def strict_problems(schema: dict[str, Any]) -> list[str]:
    """Why OpenAI strict mode would reject ``schema`` (empty: it would accept it)."""
    problems = []
    if schema.get("type") != "object":
        problems.append("#: root must be an object")
    for path, node in _walk(schema):
        if "default" in node:
            problems.append(f"{path}: has a default")
        if unknown := set(node) - ALLOWED_KEYWORDS:
            problems.append(f"{path}: unsupported keywords {sorted(unknown)}")
        if "format" in node and node["format"] not in ALLOWED_FORMATS:
            problems.append(f"{path}: unsupported format {node['format']!r}")
        if "$ref" in node and len(node) > 1:
            problems.append(f"{path}: $ref with siblings")
        if node.get("type") == "object" or "properties" in node:
            if node.get("additionalProperties") is not False:
                problems.append(f"{path}: additionalProperties is not false")
            if node.get("required") != list(node.get("properties", {})):
                problems.append(f"{path}: required is not all properties")
    return problems


# --- registry -----------------------------------------------------------------------


def test_registry_names_the_shipped_schemas() -> None:
    assert set(SCHEMAS) == {"chunk_summary", "contract_clauses"}
    assert get_schema("chunk_summary").model is ChunkSummary
    assert get_schema("contract_clauses").model is ContractClauses
    for name, spec in SCHEMAS.items():
        assert spec.name == name
        assert spec.version.strip()


def test_unknown_schema_error_lists_known_names() -> None:
    with pytest.raises(KeyError) as excinfo:
        get_schema("invoice_lines")
    message = str(excinfo.value)
    assert "invoice_lines" in message
    assert "chunk_summary" in message
    assert "contract_clauses" in message


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_instructions_ask_for_grounded_json(name: str) -> None:
    text = get_schema(name).instructions.lower()
    assert "only from the text" in text
    assert "json" in text
    assert "schema" in text


def test_spec_rejects_a_name_providers_would_refuse() -> None:
    with pytest.raises(ValueError, match="must match"):
        SchemaSpec("chunk summary!", "1", ChunkSummary, "Return JSON.")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_shipped_schema_has_an_example_answer_that_validates(name: str) -> None:
    spec = get_schema(name)
    assert spec.model.model_validate_json(spec.example)


def test_spec_rejects_an_example_that_no_longer_matches_its_model() -> None:
    with pytest.raises(ValidationError, match="language"):
        SchemaSpec("s", "1", ChunkSummary, "Return JSON.", example='{"summary": "x"}')


# --- strict JSON Schema -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_is_strict(name: str) -> None:
    schema = get_schema(name).json_schema()
    assert strict_problems(schema) == []
    assert schema["$defs"], "nested models stay in $defs"


def test_strict_check_catches_a_loose_schema() -> None:
    # The checker itself must be able to fail, or the test above proves nothing.
    loose = ChunkSummary.model_json_schema()
    loose["$defs"]["Entity"]["required"] = ["name"]
    del loose["additionalProperties"]
    loose["properties"]["language"]["default"] = "en"
    problems = strict_problems(loose)
    assert any("Entity: required" in p for p in problems)
    assert any(p.startswith("#: additionalProperties") for p in problems)
    assert any("language: has a default" in p for p in problems)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_returns_a_fresh_copy(name: str) -> None:
    spec = get_schema(name)
    first = spec.json_schema()
    expected = copy.deepcopy(first)
    first["properties"].clear()
    assert spec.json_schema() == expected


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="n/a", description="A note.")


class _Loose(BaseModel):
    """A model written without strict mode in mind: defaults and a described sub-model."""

    model_config = ConfigDict(extra="forbid")
    count: int = 3
    label: str | None = None
    inner: _Inner = Field(description="A nested model with its own description.")
    default: list[_Inner] = Field(default_factory=list, description="Named like a keyword.")


def test_json_schema_is_generic_over_models() -> None:
    schema = SchemaSpec("loose", "1", _Loose, "Return JSON.").json_schema()
    assert strict_problems(schema) == []
    assert schema["required"] == ["count", "label", "inner", "default"]
    assert schema["properties"]["inner"]["description"].startswith("A nested model")
    assert schema["properties"]["inner"]["required"] == ["note"]


def test_json_schema_refuses_open_mappings() -> None:
    class Tags(BaseModel):
        tags: dict[str, str]

    with pytest.raises(ValueError, match="open mapping"):
        SchemaSpec("tags", "1", Tags, "Return JSON.").json_schema()


# --- chunk_summary ------------------------------------------------------------------


def test_valid_chunk_summary() -> None:
    out = ChunkSummary.model_validate(VALID_SUMMARY)
    assert out.entities[3].kind == "law"
    assert ChunkSummary.model_validate_json(out.model_dump_json()) == out


def _summary(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(VALID_SUMMARY), **changes}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_summary(confidence=0.9), "confidence"),
        (_summary(language="EN"), "language"),
        (_summary(language="eng"), "language"),
        (_summary(language="en-US"), "language"),
        (_summary(key_points=[f"point {i}" for i in range(9)]), "key_points"),
        (_summary(key_points=[]), "key_points"),
        (_summary(summary="   "), "summary"),
        (_summary(entities=[{"name": "Lyon", "kind": "city"}]), "entities.0.kind"),
        (_summary(entities=[{"name": "Lyon", "kind": "location", "x": 1}]), "entities.0.x"),
        ({k: v for k, v in VALID_SUMMARY.items() if k != "entities"}, "entities"),
    ],
    ids=[
        "extra-key",
        "upper-language",
        "three-letter-language",
        "region-language",
        "nine-key-points",
        "no-key-points",
        "blank-summary",
        "wrong-entity-kind",
        "extra-entity-key",
        "missing-field",
    ],
)
def test_invalid_chunk_summary(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        ChunkSummary.model_validate(data)
    locations = {".".join(map(str, e["loc"])) for e in excinfo.value.errors()}
    assert field in locations


# --- contract_clauses ---------------------------------------------------------------


def test_valid_contract_clauses() -> None:
    out = ContractClauses.model_validate(VALID_CLAUSES)
    first = out.clauses[0]
    assert first.effective_date is not None and first.effective_date.isoformat() == "2024-07-01"
    assert first.obligations[0].deadline is None
    assert out.clauses[1].effective_date is None
    assert ContractClauses.model_validate({"clauses": []}).clauses == []


def _clause(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID_CLAUSES)
    data["clauses"][0].update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_clause(currency_note="x"), "clauses.0.currency_note"),
        (_clause(amounts=[{"value": 10, "currency": "usd"}]), "clauses.0.amounts.0.currency"),
        (_clause(amounts=[{"value": 10, "currency": "US$"}]), "clauses.0.amounts.0.currency"),
        (_clause(amounts=[{"value": 10, "currency": "EURO"}]), "clauses.0.amounts.0.currency"),
        (_clause(amounts=[{"value": -5, "currency": "EUR"}]), "clauses.0.amounts.0.value"),
        (_clause(clause_type="indemnity"), "clauses.0.clause_type"),
        (_clause(effective_date="31/12/2024"), "clauses.0.effective_date"),
        (
            _clause(obligations=[{"party": "A", "action": "Pay.", "deadline": "soon"}]),
            "clauses.0.obligations.0.deadline",
        ),
        (
            _clause(obligations=[{"party": "A", "action": "Pay."}]),
            "clauses.0.obligations.0.deadline",
        ),
        ({"clauses": [], "notes": "none"}, "notes"),
    ],
    ids=[
        "extra-key",
        "lowercase-currency",
        "symbol-currency",
        "four-letter-currency",
        "negative-amount",
        "wrong-clause-type",
        "european-date-format",
        "bad-deadline",
        "missing-nullable-deadline",
        "extra-top-level-key",
    ],
)
def test_invalid_contract_clauses(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        ContractClauses.model_validate(data)
    locations = {".".join(map(str, e["loc"])) for e in excinfo.value.errors()}
    assert field in locations


# --- sample corpus ------------------------------------------------------------------


def _documents(region: str) -> list[Path]:
    return sorted(p for p in (CORPUS / region).rglob("*") if p.is_file())


@pytest.mark.parametrize(("region", "minimum"), [("eu", 16), ("us", 16), ("ch", 2)])
def test_corpus_has_documents_per_region(region: str, minimum: int) -> None:
    docs = _documents(region)
    assert len(docs) >= minimum
    assert {p.suffix for p in docs} == {".txt", ".md"}
    assert any(p.parent != CORPUS / region for p in docs) or region == "ch"


@pytest.mark.parametrize("region", ["eu", "us", "ch"])
def test_corpus_documents_are_utf8_and_not_empty(region: str) -> None:
    for path in _documents(region):
        text = path.read_bytes().decode("utf-8")  # raises on anything that is not UTF-8
        words = len(text.split())
        assert 200 <= words <= 2000, f"{path.name}: {words} words"


def test_free_text_may_hold_quotes_and_lines_and_carries_no_pattern() -> None:
    """A pattern on free text breaks grammar-based servers (they apply it to the raw JSON
    text, see ``schemas._types``): quotes and line breaks are valid, blank is not."""
    text = 'The "Agreement" ends on 31 May.\nRent is due monthly.'
    assert ChunkSummary.model_validate(_summary(summary=text)).summary == text
    schema = get_schema("chunk_summary").json_schema()
    assert "pattern" not in schema["properties"]["summary"]
    assert "pattern" not in schema["properties"]["key_points"]["items"]
