"""Constrained string types shared by the schemas.

What a schema constrains is enforced by the servers that turn it into a grammar
(llama.cpp, llama-cpp-python, vLLM, Ollama) and by the vendors' strict modes, so a
constraint must mean the same to all of them:

- strict structured output accepts ``pattern`` (and ``format``) on strings but not
  ``minLength``/``maxLength``;
- grammar-based servers apply a ``pattern`` to the raw JSON text between the quotes, so
  a pattern that admits any character (``.``, ``[^ ]``) lets the model write an unescaped
  ``"`` and never close the string, and one that excludes ``"`` forbids quotes in the
  value; they also ignore unanchored patterns and class escapes such as ``\\S``.

So free text carries no pattern: ``NonBlank`` is checked by pydantic after the answer
(a blank one is repaired like any invalid answer), and patterns are kept for closed
alphabets (``^[a-z]{2}$``), which every engine reads alike
(``pipeline.providers.structured.enforcement_warnings`` checks shipped schemas).
"""

from typing import Annotated

from pydantic import AfterValidator


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain a non-whitespace character")
    return value


#: Text with at least one non-whitespace character (checked after the answer, see above).
NonBlank = Annotated[str, AfterValidator(_not_blank)]
