"""Which regions a document may be sent to.

    rules = Residency.from_config(cfg.corpus)
    rules.decide("eu/contracts/msa.md")   # Decision(regions=("eu",), rule="eu/**")

Rules are tried in order and the first whose glob matches the document's path wins. A
document no rule matches gets ``corpus.residency_default``: ``deny`` gives it no region
at all, so its chunks fail with ``no_route`` and nothing is sent anywhere. There is no
implicit "any region".
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import CorpusConfig
from pipeline.globs import glob_match


@dataclass(frozen=True, slots=True)
class Decision:
    regions: tuple[str, ...]
    rule: str
    """What decided: the matching glob, ``default`` or ``default:deny``."""


@dataclass(frozen=True, slots=True)
class Residency:
    rules: tuple[tuple[str, tuple[str, ...]], ...]
    default: tuple[str, ...] | None  # None: deny

    @classmethod
    def from_config(cls, corpus: CorpusConfig) -> Residency:
        rules = tuple((r.match, tuple(r.regions)) for r in corpus.residency)
        default = None if corpus.residency_default == "deny" else tuple(corpus.residency_default)
        return cls(rules=rules, default=default)

    def decide(self, path: str) -> Decision:
        for pattern, regions in self.rules:
            if glob_match(pattern, path):
                return Decision(regions=regions, rule=pattern)
        if self.default is None:
            return Decision(regions=(), rule="default:deny")
        return Decision(regions=self.default, rule="default")
