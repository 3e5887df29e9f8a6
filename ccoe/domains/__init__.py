"""The paper's five domains, built offline: Math, Code, Law, Medical and Text-to-SQL.

`DOMAINS` maps a name to its Domain (see `ccoe.domains.base.Domain`); `prepare` writes the splits
into the data cache; `router_spec` assembles the gate's rules and a one-expert-per-domain mapping.
"""

from __future__ import annotations

from collections.abc import Iterable

from ccoe.config import DataSpec, RouterSpec
from ccoe.domains.base import Domain, PreparedDomain, prepare_domain, read_jsonl
from ccoe.domains.code import CODE
from ccoe.domains.math import MATH
from ccoe.domains.mcq import LAW, MEDICAL
from ccoe.domains.sql import SQL

DOMAINS: dict[str, Domain] = {d.name: d for d in (MATH, CODE, LAW, MEDICAL, SQL)}


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise KeyError(f"unknown domain {name!r}; known: {sorted(DOMAINS)}")
    return DOMAINS[name]


def prepare(names: Iterable[str] | None = None, force: bool = False) -> dict[str, PreparedDomain]:
    return {name: prepare_domain(get_domain(name), force) for name in (names or DOMAINS)}


def eval_items(name: str) -> list[dict]:
    return read_jsonl(prepare([name])[name].eval)


def train_data_spec(name: str, **overrides) -> DataSpec:
    """A DataSpec reading the prepared training split of a domain (prompt/response fields; for a
    multiple-choice domain also its options and answer, so either training objective can use it)."""
    choice = {"choices_field": "choices", "answer_field": "answer"} if DOMAINS[name].task == "choice" else {}
    return DataSpec(source=str(prepare([name])[name].train), **{**choice, **overrides})


def router_spec(mapping: dict[str, dict[str, float]] | None = None, min_score: float = 1.0) -> RouterSpec:
    """The five domains' rules; default mapping: one expert per domain, named after it."""
    return RouterSpec(
        domains={name: d.rules for name, d in DOMAINS.items()},
        mapping=mapping if mapping is not None else {name: {name: 1.0} for name in DOMAINS},
        min_score=min_score,
    )


def labelled_routing_queries() -> list[tuple[str, str]]:
    return [(q, name) for name, d in DOMAINS.items() for q in d.routing_queries]
