"""Composed tasks with checkable answers, and the planner's training pairs, built from the domains' own builders.

A composed task asks a Chinook question whose answer is one count (the SQL domain's counting
templates, slot values from the database), then one of the math domain's word problems with that
count as N in the place of its first quantity:

    How many customers are from Brazil? Call the answer N. There are N boxes with 6 pencils in each
    box. 4 of the pencils are damaged. How many pencils are not damaged?

Its gold plan is two steps: the SQL question to the sql expert, then the word problem with N written
as {1} (step 1's answer) to the math expert. Its answer is exact: the gold query's count pushed
through the arithmetic. Counts above `MAX_COUNT` are skipped (a 135M model's arithmetic is the
bottleneck there, not the planning).

The planner learns from (query -> plan JSON) pairs: composed tasks from a training seed, and every
domain's own training prompts as one-step plans (`{"steps": [{"domain": "math"}]}`), so a
single-domain query plans as one step. Benchmark tasks come from another seed and any query that is
also a training query is dropped (`composed_tasks(..., exclude=...)`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccoe.config import PlannerSpec
from ccoe.domains.base import write_jsonl
from ccoe.domains.math import WITH_FIRST
from ccoe.domains.sources import data_root
from ccoe.domains.sql import COUNT_KINDS, database_path, question_values, run_readonly, sql_question
from ccoe.manifest import PLANNER_DOMAIN
from ccoe.planning import plan_json

MAX_COUNT = 99
CONNECTORS = ("Call the answer N.", "Let N be that number.", "Use that count as N.", "Take the result as N.")


@dataclass(frozen=True)
class ComposedTask:
    """A query, its gold (domain, task) steps, its exact final answer, the kind of composition, and
    the gold query of its SQL step with the count it returns (what step 1 should answer)."""

    query: str
    steps: tuple[tuple[str, str | None], ...]
    answer: str
    kind: str
    gold_sql: str
    count: int

    @property
    def plan(self) -> str:
        return plan_json(self.steps)


def _word_problem(r: random.Random, x: int) -> tuple[str, int] | None:
    """One of the math domain's own templates (`ccoe.domains.math.WITH_FIRST`, called with `first=x`)
    with N in the place of its first quantity, standing for x; and its answer. None when x does not
    fit the template (a bill smaller than the purchase, a negative count).

    Why the domain's templates: a composed task should hand each expert a task of its own domain.
    Earlier one-step variants of them ("There are N boxes with 6 pens in each box. How many pens are
    there in all?") were not in the math expert's data, and it answered them as the nearest template
    it knew, adding that template's second step."""
    made = r.choice(WITH_FIRST)(r, first=x)
    if made is None:
        return None
    question, _, answer = made
    return question, answer


def composed_tasks(seed: int, n: int, exclude: Iterable[str] = ()) -> list[ComposedTask]:
    """`n` distinct sql -> math tasks from `seed`, none of whose queries is in `exclude`."""
    db = database_path()
    values, r = question_values(db), random.Random(seed)
    seen, tasks = set(exclude), []
    for _ in range(n * 50):
        if len(tasks) == n:
            break
        phrasings, gold = sql_question(r, values, r.choice(COUNT_KINDS))
        rows = run_readonly(db, gold)
        count = rows[0][0] if rows and rows[0] else None
        if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            continue
        question = r.choice(phrasings)
        problem = _word_problem(r, count)
        if problem is None:
            continue
        text, answer = problem
        query = f"{question} {r.choice(CONNECTORS)} {text}"
        if query in seen:
            continue
        seen.add(query)
        steps = (("sql", question), ("math", re.sub(r"\bN\b", "{1}", text)))
        tasks.append(ComposedTask(query, steps, str(answer), "sql>math", gold, count))
    if len(tasks) < n:
        raise ValueError(f"only {len(tasks)} distinct composed tasks from seed {seed} (asked for {n})")
    return tasks


def planner_rows(composed: Iterable[ComposedTask], single: dict[str, list[str]], rng: random.Random,
                 per_domain: int) -> list[dict]:
    """Planner training pairs {prompt, response}: composed queries -> their plans, and up to
    `per_domain` prompts of each domain -> a one-step plan to that domain; shuffled by `rng`."""
    rows = [{"prompt": task.query, "response": task.plan} for task in composed]
    for domain, prompts in single.items():
        for prompt in rng.sample(prompts, min(per_domain, len(prompts))):
            rows.append({"prompt": prompt, "response": plan_json([(domain, None)])})
    rng.shuffle(rows)
    return rows



def planner_training_rows(domains: Iterable[str], spec: PlannerSpec, given: Mapping[str, Sequence[str]] | None = None) -> list[dict]:
    """The planner's training pairs for experts of `domains`: `spec.composed` composed tasks when both
    sql and math have experts, and `spec.per_domain` one-step prompts per domain (`given` prompts for a
    domain that is not built in, as for the learned router)."""
    from ccoe.learned_router import domain_prompts

    domains = [d for d in dict.fromkeys(domains) if d != PLANNER_DOMAIN]
    composed = composed_tasks(spec.seed, spec.composed) if spec.composed and {"sql", "math"} <= set(domains) else []
    return planner_rows(composed, domain_prompts(domains, given), random.Random(f"planner:{spec.seed}"), spec.per_domain)


def planner_data_file(rows: Sequence[dict]) -> Path:
    """The rows as `<data>/planner/<sha256 of their JSON lines>.jsonl`, written once (atomically).

    Why a file and not inline records: a pipeline's jobs travel as flow-run parameters, which Prefect
    caps at 512 KiB, and ~900 plans with their prompts are more; content addressing makes equal data
    the same file, so the job's data fingerprint (and its skip decision) are unaffected."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path = data_root() / "planner" / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, list(rows))
    return path
