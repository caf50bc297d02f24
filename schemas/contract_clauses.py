"""``contract_clauses``: the clauses of a contract, with parties, dates, amounts and
obligations.

    >>> ContractClauses.model_validate_json('{"clauses": []}').clauses
    []
"""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas._spec import SchemaSpec
from schemas._types import NonBlank

ClauseType = Literal[
    "term",
    "payment",
    "termination",
    "confidentiality",
    "liability",
    "data_protection",
    "governing_law",
    "service_level",
    "intellectual_property",
    "other",
]


class Amount(BaseModel):
    """A sum of money stated in a clause."""

    model_config = ConfigDict(extra="forbid")

    value: float = Field(
        ge=0, description="The number only, without currency or thousands separators."
    )
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = Field(
        description="ISO 4217 code, three uppercase letters, e.g. 'EUR', 'USD', 'CHF'."
    )


class Obligation(BaseModel):
    """Something one party must do."""

    model_config = ConfigDict(extra="forbid")

    party: NonBlank = Field(description="The party that owes the obligation, as named.")
    action: NonBlank = Field(description="What the party must do, in one short sentence.")
    deadline: date | None = Field(
        description="The date by which it must be done (YYYY-MM-DD), or null when the "
        "text states no calendar date."
    )


class Clause(BaseModel):
    """One clause (or closely related group of provisions) of a contract."""

    model_config = ConfigDict(extra="forbid")

    clause_type: ClauseType = Field(
        description="The kind of clause; use 'other' only when no other type fits."
    )
    parties: list[NonBlank] = Field(
        description="The parties this clause binds or names, as written in the text."
    )
    effective_date: date | None = Field(
        description="The date the clause takes effect (YYYY-MM-DD), or null when the text "
        "does not state one."
    )
    amounts: list[Amount] = Field(
        description="Every sum of money the clause states. Empty if it states none."
    )
    obligations: list[Obligation] = Field(
        description="What each party must do under this clause. Empty if nothing."
    )
    summary: NonBlank = Field(description="One sentence saying what the clause provides.")


class ContractClauses(BaseModel):
    """The contract clauses found in one chunk of a document."""

    model_config = ConfigDict(extra="forbid")

    clauses: list[Clause] = Field(
        description="The clauses in the text, in the order they appear. Empty if the text "
        "contains no contractual provisions."
    )


SPEC = SchemaSpec(
    name="contract_clauses",
    version="1",
    model=ContractClauses,
    instructions=(
        "You extract contract clauses from one chunk of a longer document. Answer only "
        "from the text you are given: do not add facts, guesses or outside knowledge. For "
        "each clause the text states, give its type, the parties it names, its effective "
        "date (null if the text gives none), every amount with its ISO 4217 currency code, "
        "each obligation with the party that owes it, the action and its deadline (null "
        "if no calendar date is stated), and a one-sentence summary. Write dates as "
        "YYYY-MM-DD. If the text contains no contractual provisions, return an empty "
        "clauses list. Return only a JSON object that matches the given schema, with no "
        "other text."
    ),
    example=json.dumps(
        {
            "clauses": [
                {
                    "clause_type": "payment",
                    "parties": ["Vantrel Systems B.V.", "Nordhaven Logistics GmbH"],
                    "effective_date": "2025-03-01",
                    "amounts": [{"value": 12500, "currency": "EUR"}],
                    "obligations": [
                        {
                            "party": "Nordhaven Logistics GmbH",
                            "action": "Pay the monthly hosting fee within 30 days of each invoice.",
                            "deadline": None,
                        }
                    ],
                    "summary": "Nordhaven pays Vantrel EUR 12,500 a month for hosting from 1 "
                    "March 2025.",
                },
                {
                    "clause_type": "termination",
                    "parties": ["Vantrel Systems B.V.", "Nordhaven Logistics GmbH"],
                    "effective_date": None,
                    "amounts": [],
                    "obligations": [
                        {
                            "party": "Vantrel Systems B.V.",
                            "action": "Return or delete all customer data within 60 "
                            "days of termination.",
                            "deadline": None,
                        }
                    ],
                    "summary": "Either party may end the agreement with six months' written "
                    "notice.",
                },
            ]
        }
    ),
)
