"""``chunk_summary``: a short summary of one chunk, its key points and named entities.

>>> ChunkSummary.model_validate_json(
...     '{"summary": "Rent rises 3% in 2025.", "key_points": ["Rent +3%"],'
...     ' "entities": [{"name": "2025", "kind": "date"}], "language": "en"}'
... ).language
'en'
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas._spec import SchemaSpec
from schemas._types import NonBlank

EntityKind = Literal[
    "person", "organization", "location", "date", "money", "product", "law", "other"
]


class Entity(BaseModel):
    """A named thing the text mentions."""

    model_config = ConfigDict(extra="forbid")

    name: NonBlank = Field(
        description="The entity as written in the text, e.g. 'Vantrel Systems B.V.' or "
        "'EUR 12,500' or '1 March 2025'."
    )
    kind: EntityKind = Field(
        description="What the entity is; 'law' covers statutes and regulations such as "
        "the GDPR; use 'other' only when no other kind fits."
    )


class ChunkSummary(BaseModel):
    """A faithful summary of one chunk of a document."""

    model_config = ConfigDict(extra="forbid")

    summary: NonBlank = Field(
        description="Two to four sentences saying what the text is about and what it "
        "decides, requires or reports. Only facts stated in the text."
    )
    key_points: list[NonBlank] = Field(
        min_length=1,
        max_length=8,
        description="The most important facts, one short sentence each, most important "
        "first: between 1 and 8 items.",
    )
    entities: list[Entity] = Field(
        description="People, organizations, places, dates, amounts of money, products and "
        "laws named in the text, each once. Empty if the text names none."
    )
    language: Annotated[str, Field(pattern=r"^[a-z]{2}$")] = Field(
        description="ISO 639-1 code of the text's main language, two lowercase letters, "
        "e.g. 'en', 'de', 'fr'."
    )


SPEC = SchemaSpec(
    name="chunk_summary",
    version="1",
    model=ChunkSummary,
    instructions=(
        "You summarise one chunk of a longer business document. Answer only from the text "
        "you are given: do not add facts, guesses or outside knowledge, and do not invent "
        "anything the text does not say. Write a summary of two to four sentences, list "
        "between one and eight key points (most important first), and list each person, "
        "organization, location, date, amount of money, product and law the text names, "
        "with its kind. Set language to the ISO 639-1 code of the text's main language. "
        "Return only a JSON object that matches the given schema, with no other text."
    ),
    example=json.dumps(
        {
            "summary": "The amendment extends the hosting agreement between Vantrel Systems B.V. "
            "and Nordhaven Logistics GmbH until 31 December 2027 and raises the "
            "monthly fee to EUR 12,500 from 1 March 2025. Personal data stays in data "
            "centres in Frankfurt and Amsterdam, as the GDPR requires.",
            "key_points": [
                "The agreement is extended until 31 December 2027.",
                "The monthly fee rises to EUR 12,500 from 1 March 2025.",
                "Personal data is hosted only in Frankfurt and Amsterdam.",
                "Either party may terminate with six months' written notice.",
            ],
            "entities": [
                {"name": "Vantrel Systems B.V.", "kind": "organization"},
                {"name": "Nordhaven Logistics GmbH", "kind": "organization"},
                {"name": "31 December 2027", "kind": "date"},
                {"name": "EUR 12,500", "kind": "money"},
                {"name": "1 March 2025", "kind": "date"},
                {"name": "Frankfurt", "kind": "location"},
                {"name": "Amsterdam", "kind": "location"},
                {"name": "GDPR", "kind": "law"},
            ],
            "language": "en",
        }
    ),
)
