"""Rule-based gate with an expert–domain mapping matrix (CCoE's router).

1. Each domain's rules score the request: every whole-word keyword match adds `keyword_weight`,
   every regular-expression match adds `pattern_weight` (case-insensitive).
2. The best-scoring domain wins if its score reaches `min_score` (ties go to the domain listed first).
3. The mapping matrix M (experts x domains) picks the loaded expert with the largest M[e, d] > 0.
   No winning domain, or no loaded expert for it, means the plain backbone.

Every decision carries the scores and the rule that decided it, so routing can be explained.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field


from ccoe.config import RouterSpec


@dataclass(frozen=True)
class RouteDecision:
    """Where a request goes and why. `expert` None means the plain backbone. `composed`: the learned
    router judged that the request needs several experts (plan mode then runs the planner; a plain
    route still goes to this one expert)."""

    expert: str | None
    domain: str | None
    scores: dict[str, float]
    rule: str | None
    reason: str
    matches: dict[str, list[str]] = field(default_factory=dict)
    stage: str = "rules"
    top: tuple[tuple[str, float], ...] = ()
    composed: bool = False

    def as_dict(self) -> dict:
        return {"expert": self.expert, "domain": self.domain, "stage": self.stage, "top": [list(t) for t in self.top],
                "scores": self.scores, "rule": self.rule, "reason": self.reason, "composed": self.composed}


def expert_for(domain: str, mapping: dict[str, dict[str, float]], available: Iterable[str]) -> tuple[str | None, float]:
    """The loaded expert with the largest M[e, domain] > 0 (ties: the one listed first), and its weight."""
    loaded = set(available)
    candidates = [(float(row.get(domain, 0.0)), -e, name) for e, (name, row) in enumerate(mapping.items())
                  if name in loaded and row.get(domain, 0.0) > 0]
    if not candidates:
        return None, 0.0
    weight, _, expert = max(candidates)
    return expert, weight


class RuleRouter:
    """Compiled form of a RouterSpec."""

    detects_composed = False  # rules name one domain; only the learned router knows composed queries (`GatedRouter`)

    def __init__(self, spec: RouterSpec):
        self.spec = spec
        self.domains = list(spec.domains)
        self.experts = list(spec.mapping)
        self._rules: dict[str, list[tuple[re.Pattern, str, float]]] = {}
        for domain, rules in spec.domains.items():
            compiled = [
                (re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE), f"keyword {word!r}", rules.keyword_weight)
                for word in rules.keywords
            ]
            compiled += [(re.compile(p, re.IGNORECASE), f"pattern /{p}/", rules.pattern_weight) for p in rules.patterns]
            self._rules[domain] = compiled

    def mapping_matrix(self) -> list[list[float]]:
        """M (num_experts x num_domains) as nested lists, rows in `self.experts` order, columns in
        `self.domains` order. Plain Python: routing by rules loads no tensor library (`ccoe route` stays fast)."""
        return [[float(self.spec.mapping[expert].get(domain, 0.0)) for domain in self.domains] for expert in self.experts]

    def score(self, text: str) -> tuple[dict[str, float], dict[str, list[tuple[str, float]]]]:
        scores, matches = {}, {}
        for domain, rules in self._rules.items():
            hits = [(label, weight) for pattern, label, weight in rules for _ in pattern.finditer(text)]
            scores[domain] = float(sum(w for _, w in hits))
            matches[domain] = hits
        return scores, matches

    def route(self, text: str, available: Iterable[str] | None = None) -> RouteDecision:
        """Decide the expert for one request. `available`: loaded experts (default: all in the mapping)."""
        scores, matches = self.score(text)
        labels = {d: sorted({label for label, _ in hits}) for d, hits in matches.items() if hits}
        best = max(self.domains, key=lambda d: (scores[d], -self.domains.index(d)), default=None)
        if best is None or scores[best] < self.spec.min_score:
            top = f"{best}={scores[best]:g}" if best else "no domains"
            return RouteDecision(None, None, scores, None, f"no domain reached min_score {self.spec.min_score:g} ({top}): backbone", labels)
        rule = max(matches[best], key=lambda hit: hit[1])[0]
        expert, weight = expert_for(best, self.spec.mapping, self.experts if available is None else available)
        if expert is None:
            return RouteDecision(None, best, scores, rule, f"domain {best!r} (score {scores[best]:g}, {rule}) has no loaded expert: backbone", labels)
        reason = f"domain {best!r} won with score {scores[best]:g} ({rule}); mapping M[{expert!r}, {best!r}] = {weight:g}"
        return RouteDecision(expert, best, scores, rule, reason, labels)

    def route_many(self, texts: Iterable[str], available: Iterable[str] | None = None) -> list[RouteDecision]:
        available = None if available is None else list(available)
        return [self.route(t, available) for t in texts]
