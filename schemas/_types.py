"""Constrained string types shared by the schemas.

Constraints are written as regex ``pattern``\\s because strict structured output accepts
``pattern`` (and ``format``) on strings but not ``minLength``/``maxLength``.
"""

from typing import Annotated

from pydantic import StringConstraints

#: Text with at least one non-whitespace character.
NonBlank = Annotated[str, StringConstraints(pattern=r"\S")]
