"""General-purpose prompts outside the five domains: the out-of-domain class of the learned router.

They come from 22 English sets of the `evals` package's registry (`sources.GENERAL_SETS`: reading
comprehension, everyday reasoning, history, music, food, customer service, social situations), none of
them a math, code, law, medical or SQL set, and none of them the source of any domain's eval split.
Each record's last user message is one prompt; at most `per_set` prompts per set, taken in file order,
so no single set (some have thousands of rows) dominates the class.
"""

from __future__ import annotations

import json

from ccoe.domains.sources import EVALS, GENERAL_SETS, fetch, general_file


def _user_text(record: dict) -> str | None:
    messages = record.get("input")
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return None
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = users[-1] if users else None
    return text.strip() if isinstance(text, str) and text.strip() else None


def general_prompts(per_set: int = 40) -> list[str]:
    """Up to `per_set` distinct prompts from each general set (deterministic order)."""
    files = fetch(EVALS)
    prompts: list[str] = []
    for member in GENERAL_SETS:
        seen: list[str] = []
        with files[general_file(member)].open(encoding="utf-8") as handle:
            for line in handle:
                if len(seen) >= per_set:
                    break
                try:
                    text = _user_text(json.loads(line))
                except json.JSONDecodeError:
                    continue
                if text is not None and text not in seen:
                    seen.append(text)
        prompts += seen
    return prompts
