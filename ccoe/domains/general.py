"""Offline prompt sets for the learned router: general-purpose prompts outside the five domains (its
out-of-domain class), and per domain extra questions phrased unlike the domain's training prompts.

They come from 22 English sets of the `evals` package's registry (`sources.GENERAL_SETS`: reading
comprehension, everyday reasoning, history, music, food, customer service, social situations), none of
them a math, code, law, medical or SQL set, and none of them the source of any domain's eval split.
Each record's last user message is one prompt; at most `per_set` prompts per set, taken in file order,
so no single set (some have thousands of rows) dominates the class.
"""

from __future__ import annotations

import json

from ccoe.domains.sources import DOMAIN_SETS, EVALS, GENERAL_SETS, domain_set_file, fetch, general_file


def _user_text(record: dict) -> str | None:
    messages = record.get("input")
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return None
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = users[-1] if users else None
    return text.strip() if isinstance(text, str) and text.strip() else None


def _set_prompts(path, per_set: int) -> list[str]:
    """Up to `per_set` distinct user prompts of one registry file, in file order."""
    seen: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if len(seen) >= per_set:
                break
            try:
                text = _user_text(json.loads(line))
            except json.JSONDecodeError:
                continue
            if text is not None and text not in seen:
                seen.append(text)
    return seen


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
