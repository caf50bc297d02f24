"""Constrained string types shared by the schemas.

Constraints are written as regex ``pattern``\\s because strict structured output accepts
``pattern`` (and ``format``) on strings but not ``minLength``/``maxLength``. Each pattern
is anchored (``^…$``) and uses only character classes, no ``\\S``-style escapes or
lookaround, so that servers which turn the schema into a grammar (llama.cpp,
llama-cpp-python, vLLM, Ollama) enforce it instead of ignoring it
(``pipeline.providers.structured.enforcement_warnings`` checks that).
"""

from typing import Annotated

from pydantic import StringConstraints

#: One line of text that starts and ends with a non-whitespace character.
NonBlank = Annotated[str, StringConstraints(pattern=r"^[^ \t\n\r]([^\n\r]*[^ \t\n\r])?$")]
