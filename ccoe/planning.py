"""Expert planning: a query becomes an ordered list of sub-tasks, each run by its domain's expert.

A plan is JSON, written by the planner expert (a layer expert trained on composed query -> plan
pairs, `ccoe.domains.composed`):

    {"steps": [{"domain": "sql", "task": "How many customers are from Brazil?"},
               {"domain": "math", "task": "A shop packs {1} boxes with 6 pens in each box. How many pens does it pack?"}]}

- `{k}` in a task is the answer of step k (1-based), which must come before it: references are the
  plan's edges, so a forward or self reference (a cycle) is refused.
- A one-step plan may leave out `task`: the whole query goes to that domain's expert unchanged, so a
  single-domain query costs one expert call, exactly like routing.
- When the artifact's learned router knows composed queries (its class PLANNER_DOMAIN), it decides
  first: a query it puts in one domain (or out of domain) gets that one-step plan without a planner
  pass, so it costs what routing costs; the planner plans the composed and the unsure ones.
- The text is untrusted model output: `parse_plan` accepts only that shape (at most `MAX_STEPS` steps,
  no other keys, domains with a loaded expert) and raises `PlanError` saying what was wrong; the
  caller then routes the query to one expert and reports the fallback (`plan_queries`).

The executor (`execute_plans`) runs many plans at once in waves: wave i is step i of every plan that
has one, generated as one mixed-expert batch (`ccoe.generation.generate_text`). A step's prompt is
its task with earlier answers substituted, framed the way its expert was trained (`StepTool.frame`);
its answer is what the completion resolves to (`StepTool.resolve`): the final number for math, the
result of running the query on the read-only database for SQL, the text itself otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ccoe.calculator import Calculator
from ccoe.config import DataSpec
from ccoe.evaluate import DomainScore, evaluate_loss, generation_batches
from ccoe.generation import generate_text
from ccoe.manifest import PLANNER_DOMAIN, Manifest
from ccoe.model import CCoEModel, Route
from ccoe.router import RouteDecision
from ccoe.prompt_states import PromptStates

MAX_STEPS = 4
REFERENCE = re.compile(r"\{(\d+)\}")


class PlanError(ValueError):
    """The planner's text is not a valid plan; the message says what was wrong."""


@dataclass(frozen=True)
class PlanStep:
    """One sub-task. `task` None: the whole query. `expert` None: the plain backbone."""

    domain: str | None
    expert: str | None
    task: str | None = None

    @property
    def uses(self) -> tuple[int, ...]:
        """The earlier steps (1-based) whose answers this task refers to, in order of first use."""
        return tuple(dict.fromkeys(int(k) for k in REFERENCE.findall(self.task or "")))


@dataclass(frozen=True)
class Plan:
    """Steps in execution order; `source` is "planner", "router" (a learned router settled a one-domain
    query, `router_plans`), "given" or "fallback" (then `fallback` says why)."""

    steps: tuple[PlanStep, ...]
    source: str = "planner"
    fallback: str | None = None

    def as_dict(self) -> dict:
        steps = [{"domain": s.domain, "expert": s.expert, **({"task": s.task} if s.task is not None else {}),
                  **({"uses": list(s.uses)} if s.uses else {})} for s in self.steps]
        return {"source": self.source, "fallback": self.fallback, "steps": steps}


PLAN_START = '{"steps": [{"domain": "'  # how every plan_json text starts


def plan_json(steps: Sequence[tuple[str, str | None]]) -> str:
    """The planner's target text for (domain, task) steps: compact JSON, keys in a fixed order."""
    return json.dumps({"steps": [{"domain": d, **({"task": t} if t is not None else {})} for d, t in steps]}, ensure_ascii=False)


def parse_plan(text: str, experts: Mapping[str, str]) -> Plan:
    """Validate planner output. `experts`: domain -> the expert that serves it (the mapping matrix's choice).

    The first JSON object in `text` is read (generation may run on after it); anything else raises
    PlanError: not JSON, not {"steps": [...]}, no steps or more than MAX_STEPS, a step with keys other
    than domain/task, a domain without an expert, a step without a task in a multi-step plan, or a
    reference {k} to a step that does not come before it.
    """
    start = text.find("{")
    if start < 0:
        raise PlanError("no JSON object in the planner's output")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as err:
        raise PlanError(f"the planner's output is not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(value, dict) or set(value) != {"steps"} or not isinstance(value["steps"], list):
        raise PlanError('a plan is an object with one key, "steps", holding a list')
    raw = value["steps"]
    if not 1 <= len(raw) <= MAX_STEPS:
        raise PlanError(f"a plan has 1 to {MAX_STEPS} steps, this one has {len(raw)}")
    steps = []
    for number, step in enumerate(raw, 1):
        if not isinstance(step, dict) or not set(step) <= {"domain", "task"} or not isinstance(step.get("domain"), str):
            raise PlanError(f'step {number}: expected {{"domain": str, "task": str}}, got {json.dumps(step)[:120]}')
        domain, task = step["domain"], step.get("task")
        if domain not in experts or domain == PLANNER_DOMAIN:
            raise PlanError(f"step {number}: no expert serves domain {domain!r} (loaded: {sorted(experts)})")
        if task is None and len(raw) > 1:
            raise PlanError(f"step {number}: every step of a multi-step plan needs a task")
        if task is not None and (not isinstance(task, str) or not task.strip()):
            raise PlanError(f"step {number}: the task must be a non-empty string")
        for ref in REFERENCE.findall(task or ""):
            if not 1 <= int(ref) < number:
                raise PlanError(f"step {number} refers to step {ref}, which does not come before it (a cycle or a forward reference)")
        steps.append(PlanStep(domain, experts[domain], task))
    return Plan(tuple(steps))


def plan_complete(text: str) -> bool:
    """True once the text holds a closed top-level JSON object (the planner's generation can stop)."""
    depth, inside, escaped, opened = 0, False, False, False
    for char in text:
        if inside:
            escaped, inside = (False, inside) if escaped else (char == "\\", char != '"')
            continue
        if char == '"':
            inside = True
        elif char == "{":
            depth, opened = depth + 1, True
        elif char == "}":
            depth -= 1
            if opened and depth == 0:
                return True
    return False


# -- running steps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTool:
    """How a domain's expert takes a sub-task and what its completion answers.

    `frame(task)`: the prompt in the form the expert was trained on; `resolve(completion)`: the value
    later steps see (None when there is none, e.g. SQL that fails to run); `calculator`: the step
    decodes with the calculator (`ccoe.calculator`), which writes the value after every "<arithmetic> =".
    """

    frame: Callable[[str], str] = lambda task: task
    resolve: Callable[[str], str | None] = lambda text: text.strip() or None
    max_new_tokens: int = 96
    until: Callable[[str], bool] | None = None
    calculator: bool = False


def _math_tool() -> StepTool:
    from ccoe.domains.math import final_number

    return StepTool(resolve=final_number, max_new_tokens=64, calculator=True)


def sql_answer(completion: str, db_path=None) -> str | None:
    """The result of the completion's query on the read-only database: one value as text (integral
    floats as integers), several as comma-separated text (at most 20 rows); None if it does not run."""
    import sqlite3

    from ccoe.domains.sql import database_path, extract_sql, run_readonly

    query = extract_sql(completion)
    if not query:
        return None
    try:
        rows = run_readonly(db_path or database_path(), query)
    except sqlite3.Error:
        return None
    values = [v for row in rows[:20] for v in row]
    if not values:
        return None
    return ", ".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values)


def _sql_tool() -> StepTool:
    from ccoe.domains.sql import FENCED, question_prompt

    return StepTool(frame=question_prompt, resolve=sql_answer, max_new_tokens=96, until=lambda text: FENCED.search(text) is not None)


def default_tools() -> dict[str, StepTool]:
    """Tools of the built-in domains that resolve to something other than the completion's text."""
    return {"math": _math_tool(), "sql": _sql_tool()}


@dataclass(frozen=True)
class StepTrace:
    """What one step did: its prompt after substitution, the completion, and the answer it resolved to."""

    index: int
    domain: str | None
    expert: str | None
    prompt: str
    completion: str
    answer: str | None
    error: str | None = None

    def as_dict(self) -> dict:
        return {"step": self.index, "domain": self.domain, "expert": self.expert, "prompt": self.prompt,
                "completion": self.completion, "answer": self.answer, "error": self.error}


@dataclass(frozen=True)
class PlanResult:
    """A query's final answer (the last step's), its plan and every step's trace."""

    query: str
    plan: Plan
    answer: str | None
    steps: tuple[StepTrace, ...]
    text: str

    def as_dict(self) -> dict:
        return {"query": self.query, "answer": self.answer, "text": self.text, "plan": self.plan.as_dict(),
                "trace": [s.as_dict() for s in self.steps]}


def substitute(task: str, answers: Sequence[str | None]) -> tuple[str, str | None]:
    """`task` with every {k} replaced by step k's answer; an error when a referenced step had no answer."""
    missing = [k for k in REFERENCE.findall(task) if answers[int(k) - 1] is None]
    if missing:
        return task, f"step {missing[0]} has no answer to use"
    return REFERENCE.sub(lambda m: str(answers[int(m.group(1)) - 1]), task), None


def execute_plans(
    model: CCoEModel,
    tokenizer,
    queries: Sequence[str],
    plans: Sequence[Plan],
    tools: Mapping[str | None, StepTool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    key: Callable[[str | None], str | None] = lambda name: name,
    states: PromptStates | None = None,
) -> list[PlanResult]:
    """Run every plan; wave i generates step i of all plans that have one in one mixed-expert batch.
    `key` maps an expert's name to its route in `model` (a server keys experts by blob content).
    `states`: prompt states the planner recorded (`plan_queries`); a step whose prompt is the whole
    query reuses its pass through the shared layers.
    `tools` holds each domain's StepTool; the `None` entry, if any, serves steps of no domain (the
    backbone) and domains without a tool (default: the text as it is, no calculator).

    A step that refers to a step without an answer is not generated (its error names that step);
    steps that do not depend on it still run. The final answer is the last step's. Greedy decoding,
    so a plan's result does not depend on the other plans in its batch.
    """
    tools = default_tools() if tools is None else dict(tools)
    fallback = tools.get(None, StepTool())
    calculator = Calculator.for_tokenizer(tokenizer) if any(t.calculator for t in tools.values()) else None
    answers: list[list[str | None]] = [[] for _ in queries]
    traces: list[list[StepTrace]] = [[] for _ in queries]
    texts = ["" for _ in queries]
    waves = max((len(p.steps) for p in plans), default=0)
    for wave in range(waves):
        jobs = []
        for row, plan in enumerate(plans):
            if wave >= len(plan.steps):
                continue
            step = plan.steps[wave]
            tool = tools.get(step.domain, fallback)
            if step.task is None:
                prompt, error = queries[row], None
            else:
                task, error = substitute(step.task, answers[row])
                prompt = tool.frame(task)
            if error:
                traces[row].append(StepTrace(wave + 1, step.domain, step.expert, prompt, "", None, error))
                answers[row].append(None)
            else:
                jobs.append((row, step, tool, prompt))
        # one batch per token budget: rows of the same budget share a batch whatever their expert
        for budget in sorted({tool.max_new_tokens for _, _, tool, _ in jobs}):
            group = [job for job in jobs if job[2].max_new_tokens == budget]
            untils = {id(tool.until): tool.until for _, _, tool, _ in group}
            until = None if None in untils.values() or len(untils) != 1 else next(iter(untils.values()))
            done = generate_text(model, tokenizer, [p for *_, p in group], [key(s.expert) for _, s, _, _ in group],
                                 max_new_tokens=budget, until=until, prompt_states=states,
                                 tools=[calculator if tool.calculator else None for _, _, tool, _ in group])
            for (row, step, tool, prompt), completion in zip(group, done):
                answer = tool.resolve(completion.text)
                traces[row].append(StepTrace(wave + 1, step.domain, step.expert, prompt, completion.text, answer,
                                             None if answer is not None else "the completion resolved to no answer"))
                answers[row].append(answer)
                texts[row] = completion.text
        if progress is not None:
            progress(wave + 1, waves)
    results = []
    for row, (query, plan) in enumerate(zip(queries, plans)):
        results.append(PlanResult(query, plan, answers[row][-1] if answers[row] else None, tuple(traces[row]), texts[row]))
    return results


# -- planning ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanningSetup:
    """What planning needs from an artifact: the planner expert and domain -> serving expert."""

    planner: str
    experts: Mapping[str, str] = field(default_factory=dict)
    max_new_tokens: int = 192


def single_step(domain: str | None, expert: str | None, source: str, reason: str | None) -> Plan:
    return Plan((PlanStep(domain, expert, None),), source=source, fallback=reason)


def plan_queries(
    model: CCoEModel,
    tokenizer,
    queries: Sequence[str],
    setup: PlanningSetup,
    route: Callable[[str], tuple[str | None, str | None]],
    key: Callable[[str | None], str | None] = lambda name: name,
    states: PromptStates | None = None,
    decided: Sequence[Plan | None] | None = None,
) -> list[Plan]:
    """The planner expert's plan for each query (one batch); an invalid plan becomes a one-step plan
    to `route(query)` -> (domain, expert), with the reason in `Plan.fallback`. `key`: as in `execute_plans`.
    `states`: where to record each query's pass through the shared layers, for `execute_plans`.
    `decided`: plans already made (`router_plans`); the planner runs only where it holds None.

    Every plan starts `{"steps": [{"domain": "`: those tokens are prefilled with the query
    (`plan_prefix`) and the planner decodes from the first domain name on, with `plan_complete` asked
    every 2 tokens, so a one-step plan costs about 5 decode steps instead of 16."""
    plans: list[Plan | None] = list(decided) if decided is not None else [None] * len(queries)
    if len(plans) != len(queries):
        raise ValueError(f"{len(plans)} decided plans for {len(queries)} queries")
    todo = [i for i, plan in enumerate(plans) if plan is None]
    if not todo:
        return plans
    prefix_ids, prefix = plan_prefix(tokenizer, setup.experts)
    completions = generate_text(model, tokenizer, [queries[i] for i in todo], [key(setup.planner)] * len(todo),
                                max_new_tokens=setup.max_new_tokens, until=lambda text: plan_complete(prefix + text),
                                prefix_ids=prefix_ids, check_every=2, prompt_states=states, record=states is not None)
    for i, completion in zip(todo, completions):
        try:
            plans[i] = parse_plan(prefix + completion.text, setup.experts)
        except PlanError as err:
            domain, expert = route(queries[i])
            plans[i] = single_step(domain, expert, "fallback", f"{err}; routed to {expert or 'the backbone'} instead")
    return plans


def router_plans(decisions: Sequence[RouteDecision]) -> list[Plan | None]:
    """One-step plans (source "router") for the queries that a learned router which knows composed
    queries (class PLANNER_DOMAIN, `GatedRouter.detects_composed`) settled on its own: one domain, or
    out of domain, at or above its threshold. None where the planner must plan: the router judged the
    query composed, or was unsure. Why: a single-domain query then costs exactly what routing costs
    (no planner pass); the planner, the more expensive judge, sees only what the cheap one cannot settle."""
    return [single_step(d.domain, d.expert, "router", None) if d.stage == "learned" and not d.composed else None for d in decisions]


def plan_prefix(tokenizer, domains: Iterable[str]) -> tuple[list[int], str]:
    """The token ids every plan of these domains starts with, as the planner was trained on them
    (the response is tokenised on its own, `ccoe.data.encode_example`), and their text: the longest
    common start of the tokenised plans, within `{"steps": [{"domain": "`. Empty when the tokenizer
    cannot write it back exactly (then the planner decodes the whole plan)."""
    plans = [tokenizer(plan_json([(d, None)]), add_special_tokens=False)["input_ids"] for d in dict.fromkeys(domains)]
    ids = tokenizer(PLAN_START, add_special_tokens=False)["input_ids"]
    for plan in plans:
        ids = ids[:next((i for i, (a, b) in enumerate(zip(ids, plan)) if a != b), min(len(ids), len(plan)))]
    text = tokenizer.decode(ids) if ids else ""
    return (ids, text) if text and PLAN_START.startswith(text) else ([], "")


def planning_setup(manifest_experts: Mapping[str, str], mapping: Mapping[str, Mapping[str, float]], max_new_tokens: int = 192) -> PlanningSetup:
    """From a manifest's experts (name -> domain) and its mapping matrix: the planner (the expert of
    domain PLANNER_DOMAIN) and, per routable domain, the expert the mapping picks."""
    from ccoe.router import expert_for

    planners = [name for name, domain in manifest_experts.items() if domain == PLANNER_DOMAIN]
    if not planners:
        raise ValueError(f"the artifact has no planner expert (domain {PLANNER_DOMAIN!r}); train one with `ccoe planner train`")
    domains = {d for d in manifest_experts.values() if d != PLANNER_DOMAIN}
    experts = {}
    for domain in sorted(domains):
        expert, _ = expert_for(domain, dict(mapping), manifest_experts)
        if expert is not None:
            experts[domain] = expert
    return PlanningSetup(planners[0], experts, max_new_tokens)


def plan_and_run(model: CCoEModel, tokenizer, manifest: Manifest, router, queries: Sequence[str],
                 tools: Mapping[str, StepTool] | None = None, keys: Mapping[str, str] | None = None) -> list[PlanResult]:
    """Plan every query with the manifest's planner and run the plans (`ccoe generate --plan`, the
    pyfunc's `mode: plan`, `ccoe serve`'s model `plan`). `router` (a RuleRouter or GatedRouter, or None:
    the backbone) decides the one-step plan of a query whose plan was unusable; a learned router that
    knows composed queries also settles the single-domain ones before the planner runs (`router_plans`). `keys`: the model
    route of each manifest expert when the model holds them under other names (default: their own)."""
    from ccoe.artifact import expert_mapping

    setup = planning_setup({name: e.domain for name, e in manifest.experts.items()}, expert_mapping(manifest))
    decisions = router.route_many(list(queries), available=list(manifest.routable_experts())) if router is not None else None
    routed = dict(zip(queries, decisions)) if decisions is not None else {}

    def route(query: str) -> tuple[str | None, str | None]:
        decision = routed.get(query)
        return (None, None) if decision is None else (decision.domain, decision.expert)

    decided = router_plans(decisions) if decisions is not None and router.detects_composed else None
    key = (lambda name: name) if keys is None else (lambda name: None if name is None else keys[name])
    states = shared_states(model, [key(name) for name in [setup.planner, *setup.experts.values()]])
    plans = plan_queries(model, tokenizer, queries, setup, route, key, states, decided)
    return execute_plans(model, tokenizer, queries, plans, tools, key=key, states=states)


def shared_states(model: CCoEModel, routes: Sequence[str | None]) -> PromptStates | None:
    """A store for prompts' passes through the layers below every one of these experts (None when an
    expert starts at layer 0: nothing is shared). Why not the whole model's lowest expert layer: a
    step never runs an expert the setup does not name."""
    layer = model.split_layer(list(routes))
    return PromptStates(layer) if 0 < layer < model.num_layers else None


# -- judging a planner ---------------------------------------------------------------------------------


def plan_matches(gold: str, text: str) -> float:
    """1.0 when `text` parses (`parse_plan`) to exactly the steps of the gold plan text: the same
    domains with the same tasks, in the same order; else 0.0 (an invalid plan is wrong). Only the gold
    plan's domains count as served, so a step to any other domain is wrong too."""
    steps = json.loads(gold)["steps"]
    try:
        plan = parse_plan(text, {s["domain"]: s["domain"] for s in steps})
    except PlanError:
        return 0.0
    return float([(s.domain, s.task) for s in plan.steps] == [(s["domain"], s.get("task")) for s in steps])


def evaluate_plans(model: CCoEModel, tokenizer, items: Sequence[dict], routes: Sequence[Route], *, spec: DataSpec,
                   max_new_tokens: int = 192, batch_size: int = 8, generation_batch_size: int = 32) -> dict[Route, DomainScore]:
    """The gate's evidence for a planner: per route (None: the plain backbone), the held-out NLL of the
    gold plans and plan accuracy (`plan_matches`) of the plan it writes for each query, primed as
    `plan_queries` primes it when serving (stopped earlier, see below). `items`: {prompt: query, response: gold plan
    JSON} (the planner's validation split); `spec`: its DataSpec. Returns {route: DomainScore} with
    `metric` = plan accuracy, so the gate judges a retrained planner on the plans it writes.

    A row stops as soon as its text (whitespace aside) is no longer the start of any gold plan of its
    batch, and every row 16 tokens past the longest gold plan: a model that writes no plan (the
    backbone, the reference of a first planner) would otherwise decode `max_new_tokens` for every
    item (the demo's 24 plans, both routes: 62.6 -> 38.3 s, the same scores). The cost of that: a
    plan spelled other than the planner's training targets (`plan_json`: compact, keys in order)
    counts as wrong even when it parses to the same steps.

    Why not `evaluate_domain`: a plan is primed with its fixed start (`plan_prefix`), which the
    domains' generation does not have; scoring unprimed output would judge a model nobody serves."""
    routes = list(dict.fromkeys(routes))
    losses = evaluate_loss(model, tokenizer, PLANNER_DOMAIN, items, routes, spec=spec, batch_size=batch_size)
    domains = sorted({s["domain"] for it in items for s in json.loads(it["response"])["steps"]})
    prefix_ids, prefix = plan_prefix(tokenizer, domains)
    longest = max(len(tokenizer(it["response"], add_special_tokens=False)["input_ids"]) for it in items)
    max_new_tokens = min(max_new_tokens, longest - len(prefix_ids) + 16)  # far past the longest gold plan nothing can match
    right: dict[Route, list[float]] = {route: [0.0] * len(items) for route in routes}
    for rows in generation_batches([it["prompt"] for it in items], routes, generation_batch_size):
        golds = {_squeezed(items[i]["response"]) for i, _ in rows}
        completions = generate_text(model, tokenizer, [items[i]["prompt"] for i, _ in rows], [routes[r] for _, r in rows],
                                    max_new_tokens=max_new_tokens, use_chat_template=spec.use_chat_template,
                                    until=lambda text: plan_complete(prefix + text) or _left_every_gold(prefix + text, golds),
                                    prefix_ids=prefix_ids, check_every=2)
        for (i, r), completion in zip(rows, completions):
            right[routes[r]][i] = plan_matches(items[i]["response"], prefix + completion.text)
    return {r: replace(losses[r], metric=sum(right[r]) / len(items), item_scores=tuple(right[r])) for r in routes}


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _left_every_gold(text: str, golds: set[str]) -> bool:
    """True when `text`, whitespace aside, neither starts any of the (squeezed) gold plans nor holds
    one whole: then no continuation can write one of them."""
    have = _squeezed(text)
    return not any(gold.startswith(have) or have.startswith(gold) for gold in golds)
