"""Expert planning: plan validation (bad JSON, unknown experts, cycles), the executor's waves and
substitution, the fallback to routing, and the composed tasks' answers."""

import json
import random
from dataclasses import replace
import re
import sqlite3

import pytest
import torch

from ccoe.config import LayerSelection, PlannerSpec
from ccoe.domains.composed import composed_tasks, planner_rows, planner_training_rows
from ccoe.domains.math import WITH_FIRST
from ccoe.domains.sql import database_path, run_readonly
from ccoe.data import encode_prompt
from ccoe.expert import create_expert
from ccoe.generation import generate, generate_text
from ccoe.cli import main
from ccoe.manifest import PLANNER_DOMAIN, read_manifest
from ccoe.model import CCoEModel
from ccoe.backbone import load_backbone
from ccoe.config import BackboneSpec
from ccoe.planning import (
    PLAN_START, Plan, PlanError, PlanningSetup, PlanStep, StepTool, evaluate_plans, execute_plans, parse_plan, plan_complete, plan_json,
    plan_matches, plan_prefix, plan_queries, planning_setup, sql_answer, substitute,
)
from tests.conftest import perturb, save_tiny_artifact

EXPERTS = {"math": "math-v2", "sql": "sql"}


def test_a_valid_plan_parses_with_experts_from_the_mapping_and_its_references():
    text = plan_json([("sql", "How many customers are from Brazil?"), ("math", "What is {1} * 3 + {1}?")])
    plan = parse_plan(text + " trailing text the model kept writing", EXPERTS)
    assert plan.steps == (PlanStep("sql", "sql", "How many customers are from Brazil?"), PlanStep("math", "math-v2", "What is {1} * 3 + {1}?"))
    assert [s.uses for s in plan.steps] == [(), (1,)]
    assert parse_plan('{"steps": [{"domain": "math"}]}', EXPERTS).steps == (PlanStep("math", "math-v2", None),)


@pytest.mark.parametrize("text, message", [
    ("the answer is 4", "no JSON object"),
    ('{"steps": [{"domain": "math", "task": "x"}', "not JSON"),
    ('{"plan": []}', 'one key, "steps"'),
    ('{"steps": []}', "1 to 4 steps, this one has 0"),
    (json.dumps({"steps": [{"domain": "math", "task": "t"}] * 5}), "this one has 5"),
    ('{"steps": [{"domain": "law", "task": "t"}]}', "no expert serves domain 'law'"),
    ('{"steps": [{"domain": "planning", "task": "t"}]}', "no expert serves domain 'planning'"),
    ('{"steps": [{"domain": "math", "task": "t", "expert": "x"}]}', "step 1: expected"),
    ('{"steps": [{"domain": "math", "task": ""}]}', "non-empty string"),
    ('{"steps": [{"domain": "sql"}, {"domain": "math", "task": "{1}"}]}', "step 1: every step of a multi-step plan needs a task"),
    ('{"steps": [{"domain": "sql", "task": "{2}"}, {"domain": "math", "task": "{1}"}]}', "step 1 refers to step 2"),
    ('{"steps": [{"domain": "sql", "task": "a"}, {"domain": "math", "task": "{2} + 1"}]}', "step 2 refers to step 2, which does not come before it"),
])
def test_an_invalid_plan_is_refused_with_what_was_wrong(text, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace("{", r"\{").replace("[", r"\[")):
        parse_plan(text, {**EXPERTS, PLANNER_DOMAIN: "planner"})


def test_plan_complete_sees_a_closed_object_past_braces_in_strings():
    assert not plan_complete('{"steps": [{"domain": "math", "task": "use {1}')
    assert not plan_complete('{"steps": [{"domain": "math", "task": "a \\" } b"}')
    assert plan_complete('{"steps": [{"domain": "math", "task": "a {1} }"}]} and more')


def test_substitution_uses_earlier_answers_and_reports_a_missing_one():
    assert substitute("{1} boxes of {2}", ["4", "6"]) == ("4 boxes of 6", None)
    assert substitute("{1} boxes of {2}", ["4", None])[1] == "step 2 has no answer to use"


def test_sql_answer_runs_the_query_read_only():
    assert sql_answer("```sql\nSELECT COUNT(*) FROM customer WHERE country = 'Brazil'\n```") == "5"
    assert sql_answer("SELECT 2.0 * 3") == "6"
    assert sql_answer("SELECT name FROM genre WHERE genre_id <= 2 ORDER BY genre_id") == "Rock, Jazz"
    assert sql_answer("DROP TABLE customer") is None  # no SELECT: nothing runs
    assert sql_answer("SELECT * FROM no_such_table") is None
    with sqlite3.connect(database_path()) as db:
        assert db.execute("SELECT COUNT(*) FROM customer").fetchone()[0] == 59


@pytest.fixture
def planned_model(local_backbone_dir):
    model = CCoEModel(load_backbone(BackboneSpec(source=str(local_backbone_dir))))
    model.push_expert(perturb(create_expert(model.backbone, "m", "math", LayerSelection(strategy="top", k=1)), scale=0.3, seed=1))
    model.push_expert(perturb(create_expert(model.backbone, "s", "sql", [0, 2]), scale=0.3, seed=2))
    model.push_expert(perturb(create_expert(model.backbone, "p", PLANNER_DOMAIN, LayerSelection(strategy="top", k=2)), scale=0.3, seed=3))
    return model


def _echo_tools(resolve=lambda text: text.split()[0] if text.split() else None):
    framed = StepTool(frame=lambda task: f"write {task}", resolve=resolve, max_new_tokens=4)
    return {"math": framed, "sql": framed}


def test_execution_substitutes_earlier_answers_and_equals_running_each_plan_alone(planned_model):
    tokenizer = planned_model.backbone.tokenizer
    plans = [
        Plan((PlanStep("sql", "s", "sum of two"), PlanStep("math", "m", "{1} plus three"))),
        Plan((PlanStep("math", "m", None),)),
        Plan((PlanStep(None, None, "what is five"), PlanStep("sql", "s", "{1} sql {1}"), PlanStep("math", "m", "{2} minus {1}"))),
    ]
    queries = ["what is the sum", "what is two plus three", "law court patient"]
    together = execute_plans(planned_model, tokenizer, queries, plans, _echo_tools())
    for query, plan, result in zip(queries, plans, together):
        alone = execute_plans(planned_model, tokenizer, [query], [plan], _echo_tools())[0]
        assert alone == result
        assert [s.expert for s in result.steps] == [s.expert for s in plan.steps]
        assert result.answer == result.steps[-1].answer
    first, second = together[0].steps
    assert first.prompt == "write sum of two" and second.prompt == f"write {first.answer} plus three"
    assert together[1].steps[0].prompt == "what is two plus three"  # no task: the query itself, unframed
    one, two, three = together[2].steps
    assert two.prompt == f"write {one.answer} sql {one.answer}" and three.prompt == f"write {two.answer} minus {one.answer}"


def test_steps_whose_tool_has_the_calculator_decode_with_it(planned_model, monkeypatch):
    """One wave mixing a math step (its tool has the calculator) and an sql step: the math row decodes
    with a Calculator of the model's tokenizer, the sql row with none; the built-in math tool has it."""
    import ccoe.planning as planning
    from ccoe.calculator import Calculator

    seen, real = [], planning.generate_text

    def spy(model, tokenizer, prompts, experts, **kwargs):
        seen.append((list(experts), kwargs["tools"]))
        return real(model, tokenizer, prompts, experts, **kwargs)

    monkeypatch.setattr(planning, "generate_text", spy)
    tools = {"math": StepTool(max_new_tokens=4, calculator=True), "sql": StepTool(max_new_tokens=4)}
    plans = [Plan((PlanStep("sql", "s", None),)), Plan((PlanStep("math", "m", None),))]
    execute_plans(planned_model, planned_model.backbone.tokenizer, ["sum of two", "two plus three"], plans, tools)
    [(experts, row_tools)] = seen
    assert experts == ["s", "m"] and row_tools[0] is None
    assert isinstance(row_tools[1], Calculator) and row_tools[1].tokenizer is planned_model.backbone.tokenizer
    assert planning.default_tools()["math"].calculator and not planning.default_tools()["sql"].calculator


def test_a_step_without_an_answer_stops_its_plan_with_the_reason(planned_model):
    plan = Plan((PlanStep("sql", "s", "sum"), PlanStep("math", "m", "{1} plus two")))
    result = execute_plans(planned_model, planned_model.backbone.tokenizer, ["q"], [plan], _echo_tools(resolve=lambda text: None))[0]
    assert result.answer is None
    assert [s.error for s in result.steps] == ["the completion resolved to no answer", "step 1 has no answer to use"]
    assert result.steps[1].completion == ""  # not generated


def test_an_unusable_plan_falls_back_to_routing_and_says_why(planned_model):
    setup = planning_setup({"m": "math", "s": "sql", "p": PLANNER_DOMAIN}, {"m": {"math": 1.0}, "s": {"sql": 1.0}, "p": {PLANNER_DOMAIN: 1.0}},
                           max_new_tokens=6)
    assert setup == PlanningSetup("p", {"math": "m", "sql": "s"}, 6)
    plans = plan_queries(planned_model, planned_model.backbone.tokenizer, ["what is two", "sql query"], setup,
                         route=lambda q: ("sql", "s") if "sql" in q else (None, None))
    assert [p.source for p in plans] == ["fallback", "fallback"]  # an untrained planner writes no JSON
    assert [p.steps for p in plans] == [(PlanStep(None, None, None),), (PlanStep("sql", "s", None),)]
    assert plans[0].fallback.startswith("no JSON object") and plans[0].fallback.endswith("routed to the backbone instead")
    assert plans[1].fallback.endswith("routed to s instead")


def test_the_planner_plans_only_what_the_router_left_open_and_never_runs_when_all_is_decided(planned_model, monkeypatch):
    import ccoe.planning as planning

    setup = planning_setup({"m": "math", "s": "sql", "p": PLANNER_DOMAIN}, {"m": {"math": 1.0}, "s": {"sql": 1.0}, "p": {PLANNER_DOMAIN: 1.0}},
                           max_new_tokens=6)
    seen, real = [], planning.generate_text

    def spy(model, tokenizer, prompts, experts, **kwargs):
        seen.append(list(prompts))
        return real(model, tokenizer, prompts, experts, **kwargs)

    monkeypatch.setattr(planning, "generate_text", spy)
    settled = planning.single_step("sql", "s", "router", None)
    queries = ["what is two", "sql query", "both at once"]
    plans = plan_queries(planned_model, planned_model.backbone.tokenizer, queries, setup, route=lambda q: (None, None),
                         decided=[None, settled, None])
    assert seen == [["what is two", "both at once"]]  # the settled query never reaches the planner
    assert plans[1] is settled and [p.source for p in plans] == ["fallback", "router", "fallback"]
    alone = plan_queries(planned_model, planned_model.backbone.tokenizer, ["what is two", "sql query"], setup, route=lambda q: (None, None),
                         decided=[None, None])
    assert alone[0] == plans[0]  # the planner's plan of a query does not depend on its batch mates here
    seen.clear()
    assert plan_queries(planned_model, planned_model.backbone.tokenizer, queries[1:2], setup, route=lambda q: (None, None),
                        decided=[settled]) == [settled] and seen == []
    with pytest.raises(ValueError, match="2 decided plans for 3 queries"):
        plan_queries(planned_model, planned_model.backbone.tokenizer, queries, setup, route=lambda q: (None, None), decided=[None, None])


def test_router_plans_settle_confident_one_domain_decisions_and_leave_composed_and_unsure_ones_to_the_planner():
    from ccoe.planning import router_plans
    from ccoe.router import RouteDecision

    decisions = [
        RouteDecision("s", "sql", {}, None, "learned router: sql", stage="learned"),
        RouteDecision(None, None, {}, None, "learned router: out of domain", stage="learned"),
        RouteDecision("m", "math", {}, None, "learned router: several experts needed", stage="learned", composed=True),
        RouteDecision("m", "math", {}, "math", "learned router unsure; rules: math", stage="rules"),
        RouteDecision(None, None, {}, None, "learned router unsure; no rule matched: backbone", stage="backbone"),
    ]
    plans = router_plans(decisions)
    assert plans[0] == Plan((PlanStep("sql", "s", None),), source="router") and plans[0].steps[0].task is None
    assert plans[1] == Plan((PlanStep(None, None, None),), source="router")
    assert plans[2:] == [None, None, None]


def test_response_prefix_ids_are_prefilled_and_the_row_goes_on_as_if_it_had_decoded_them(planned_model):
    """generate_text(prefix_ids=...) returns what follows the prefix: when the prefix is what the model
    decodes first anyway, the rest is exactly the free run's rest (how plan_queries primes plans)."""
    tokenizer = planned_model.backbone.tokenizer
    free = generate(planned_model, torch.tensor([encode_prompt(tokenizer, "what is two plus three")]), expert="p", max_new_tokens=8)[0].tolist()
    primed = generate_text(planned_model, tokenizer, ["what is two plus three"], ["p"], max_new_tokens=5, prefix_ids=free[:3])
    assert primed[0].text == tokenizer.decode(free[3:], skip_special_tokens=True).strip()


def test_plan_prefix_is_the_common_start_of_the_tokenised_plans_or_nothing(planned_model):
    class Chars:  # one token per character: every plan starts with the whole of PLAN_START
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

        def decode(self, ids):
            return "".join(map(chr, ids))

    ids, text = plan_prefix(Chars(), ["math", "sql"])
    assert text == PLAN_START and ids == [ord(c) for c in PLAN_START]
    assert plan_json([("math", None)]).startswith(PLAN_START)
    assert plan_prefix(planned_model.backbone.tokenizer, ["math"]) == ([], "")  # a word-level tokenizer cannot write it back


GOLD = plan_json([("sql", "How many customers are from Brazil?"), ("math", "A shop packs {1} boxes of 6 pens. How many pens?")])


@pytest.mark.parametrize("text, right", [
    (GOLD, 1.0),
    (GOLD + ' trailing words the generation ran on with', 1.0),
    (GOLD.replace("Brazil", "Chile"), 0.0),  # another task
    (plan_json([("sql", "How many customers are from Brazil?")]), 0.0),  # a step missing
    (GOLD.replace('"math"', '"law"'), 0.0),  # a domain the gold plan does not serve
    (GOLD.replace("{1}", "{2}"), 0.0),  # a forward reference: not a valid plan
    (GOLD[:-3], 0.0),  # cut off
])
def test_plan_matches_only_the_gold_steps(text, right):
    assert plan_matches(GOLD, text) == right
    assert plan_matches(plan_json([("math", None)]), plan_json([("math", None)])) == 1.0


def test_evaluate_plans_scores_the_primed_plans_each_route_writes_and_the_gold_nll(planned_model, monkeypatch):
    """Per route: plan accuracy of the completions read after the plan's fixed start (as served), and
    the gold plans' NLL exactly as evaluate_loss gives it."""
    import ccoe.planning as planning
    from ccoe.config import DataSpec
    from ccoe.evaluate import evaluate_loss

    tokenizer = planned_model.backbone.tokenizer
    items = [{"prompt": "sql then math", "response": GOLD}, {"prompt": "only math", "response": plan_json([("math", None)])}]
    prefix = PLAN_START[:12]
    asked = []
    monkeypatch.setattr(planning, "plan_prefix", lambda tok, domains: asked.append(list(domains)) or ([7, 8], prefix))
    seen, real = [], planning.generate_text

    def planner(model, tok, prompts, experts, **kwargs):  # route "p" writes the gold plans, the backbone the first one
        seen.append(kwargs)
        golds = {it["prompt"]: it["response"] for it in items}
        return [replace(c, text=golds[q][len(prefix):] if e == "p" else GOLD[len(prefix):])
                for c, q, e in zip(real(model, tok, prompts, experts, max_new_tokens=1), prompts, experts)]

    monkeypatch.setattr(planning, "generate_text", planner)
    spec = DataSpec(records=[], max_length=96)
    scores = evaluate_plans(planned_model, tokenizer, items, [None, "p", "p"], spec=spec, max_new_tokens=9)
    assert sorted(scores, key=str) == [None, "p"] and asked == [["math", "sql"]]  # the gold plans' domains
    assert scores["p"].metric == 1.0 and scores["p"].item_scores == (1.0, 1.0)
    assert scores[None].metric == 0.5 and scores[None].item_scores == (1.0, 0.0)
    assert all(kw["prefix_ids"] == [7, 8] and kw["max_new_tokens"] == 9 and kw["until"](GOLD[len(prefix):]) for kw in seen)
    until = seen[0]["until"]
    assert not until(GOLD[len(prefix):-2]) and not until(" ".join(GOLD[len(prefix):40]))  # still on a gold plan, spacing aside
    rest = PLAN_START[len(prefix):]
    assert not until(rest + "ma") and until(rest + 'sql", "task": "How many employees')  # off both gold plans: it cannot be right
    evaluate_plans(planned_model, tokenizer, items, ["p"], spec=spec, max_new_tokens=10_000)
    longest = len(tokenizer(GOLD, add_special_tokens=False)["input_ids"])
    assert seen[-1]["max_new_tokens"] == longest - 2 + 16  # nothing can match far past the longest gold plan
    loss = evaluate_loss(planned_model, tokenizer, PLANNER_DOMAIN, items, [None, "p"], spec=spec)
    assert all(scores[r].item_nll == loss[r].item_nll and scores[r].loss == loss[r].loss for r in (None, "p"))


def test_planning_setup_needs_a_planner():
    with pytest.raises(ValueError, match="no planner expert"):
        planning_setup({"m": "math"}, {"m": {"math": 1.0}})


def test_composed_tasks_have_exact_answers_and_valid_gold_plans():
    tasks = composed_tasks(5, 40)
    assert len({t.query for t in tasks}) == 40
    db = database_path()
    for task in tasks:
        plan = parse_plan(task.plan, {"sql": "sql", "math": "math"})
        (sql_domain, question), (math_domain, problem) = task.steps
        assert (sql_domain, math_domain) == ("sql", "math") and plan.steps[1].uses == (1,)
        assert question in task.query and "{1}" in problem and "N" not in problem.split()
        assert task.query.endswith(problem.replace("{1}", "N"))
    checked = 0
    for task in tasks:
        assert run_readonly(db, task.gold_sql) == [(task.count,)] and 1 <= task.count <= 99
        problem, count = task.steps[1][1], task.count
        price = re.fullmatch(r"A shop sells notebooks for \$(\d+) each\. \w+ buys \{1\} notebooks and pays with a \$(\d+) bill\. .*", problem)
        boxes = re.fullmatch(r"There are \{1\} boxes with (\d+) \w+ in each box\. (\d+) of the \w+ are damaged\. .*", problem)
        if price:
            assert task.answer == str(int(price.group(2)) - count * int(price.group(1)))
            checked += 1
        if boxes:
            assert task.answer == str(count * int(boxes.group(1)) - int(boxes.group(2)))
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("template", WITH_FIRST, ids=lambda t: t.__name__)
@pytest.mark.parametrize("seed", range(20))
def test_a_given_first_quantity_answers_as_if_the_template_had_drawn_it(template, seed):
    """`first=x` writes N in the question and answers for x: given the number the template drew itself,
    the question reads the same once N is that number, and the answer is the same."""
    question, _, answer = template(random.Random(seed))
    matches = []
    for number in dict.fromkeys(re.findall(r"\d+", question)):
        given = template(random.Random(seed), first=int(number))
        if given is not None and re.sub(r"\bN\b", number, given[0]) == question:
            matches.append((number, given[2]))
    assert matches and all(given == answer for _, given in matches)
    shown = template(random.Random(seed), first=1)
    assert shown is None or len(re.findall(r"\bN\b", shown[0])) == 1


def test_a_composed_math_step_is_one_of_the_math_domains_own_problems():
    """With N written as the count, every composed math step reads like a problem the math expert
    trained on (numbers, names and items aside), and several templates are used."""
    from ccoe.domains.math import ITEMS, NAMES, problem

    def shape(text):
        text = re.sub(r"\d+", "#", text)
        return re.sub(r"\b(" + "|".join(NAMES + ITEMS) + r")\b", "_", text)

    r = random.Random(0)
    domain = {shape(problem(r)["prompt"]) for _ in range(3000)}
    composed = [shape(t.steps[1][1].replace("{1}", str(t.count))) for t in composed_tasks(3, 200)]
    assert set(composed) <= domain and len(set(composed)) >= 8


def test_benchmark_tasks_exclude_training_queries():
    train = {t.query for t in composed_tasks(0, 300)}
    held = composed_tasks(0, 50, exclude=train)
    assert not train & {t.query for t in held}


def test_planner_rows_mix_composed_and_one_step_plans():
    tasks = composed_tasks(1, 10)
    rows = planner_rows(tasks, {"law": ["a law question", "another"], "math": ["what is 2 + 2?"]}, random.Random(0), per_domain=1)
    assert len(rows) == 12
    responses = [json.loads(r["response"]) for r in rows]
    assert sum(len(r["steps"]) == 2 for r in responses) == 10
    singles = sorted(r["steps"][0]["domain"] for r in responses if len(r["steps"]) == 1)
    assert singles == ["law", "math"]


def test_planner_training_rows_compose_only_when_sql_and_math_have_experts():
    spec = PlannerSpec(composed=20, per_domain=5)
    both = planner_training_rows(["sql", "math", PLANNER_DOMAIN], spec)
    assert sum('"task"' in r["response"] for r in both) == 20 and len(both) == 30
    law_only = planner_training_rows(["law"], spec)
    assert len(law_only) == 5 and all(r["response"] == '{"steps": [{"domain": "law"}]}' for r in law_only)
    with pytest.raises(ValueError, match="give its training prompts"):
        planner_training_rows(["poetry"], spec)


@pytest.fixture
def tiny_artifact(tmp_path, local_backbone_dir):
    return save_tiny_artifact(tmp_path, local_backbone_dir)


def test_planner_train_pushes_a_planner_and_leaves_every_expert_as_it_was(tiny_artifact, tmp_path, capsys):
    config = tmp_path / "planner.yaml"
    config.write_text("composed: 4\nper_domain: 3\nmax_length: 64\nlayers: {strategy: top, k: 1}\n"
                      "training: {max_steps: 2, batch_size: 2, learning_rate: 1.0e-3, log_every_n_steps: 1}\n")
    before = read_manifest(tiny_artifact)
    assert main(["planner", "train", "--artifact", str(tiny_artifact), "--config", str(config),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    after = read_manifest(tiny_artifact)
    assert {n: e for n, e in after.experts.items() if n != "planner"} == before.experts
    planner = after.experts["planner"]
    assert planner.domain == PLANNER_DOMAIN and planner.layers == [3] and planner.run_id
    assert sorted(after.routable_experts()) == ["law", "math"]
    assert "on 0 composed + 6 one-step plans" in capsys.readouterr().out  # no sql expert: nothing to compose
    assert main(["generate", "--artifact", str(tiny_artifact), "--plan", "--json", "what is two plus three"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["query"] == "what is two plus three" and line["plan"]["source"] == "fallback"  # 2 steps teach no JSON
    assert len(line["trace"]) == 1 and line["plan"]["fallback"].endswith("instead")


def test_plan_mode_asks_the_planner_only_for_what_a_composed_aware_router_leaves_open(tiny_artifact, tmp_path, capsys):
    """A learned router with the class 'planning' settles a one-domain query (no planner pass: the
    result is the routed expert's own run) and hands a composed one to the planner."""
    from ccoe.artifact import load_artifact, stage_router
    from ccoe.learned_router import OUT_OF_DOMAIN, GatedRouter, LearnedRouter, SentenceEncoder
    from ccoe.manifest import merge, write_manifest
    from ccoe.planning import plan_and_run
    from ccoe.storage import BlobStore

    config = tmp_path / "planner.yaml"
    config.write_text("composed: 0\nper_domain: 3\nmax_length: 64\nlayers: {strategy: top, k: 1}\n"
                      "training: {max_steps: 2, batch_size: 2, learning_rate: 1.0e-3, log_every_n_steps: 1}\n")
    assert main(["planner", "train", "--artifact", str(tiny_artifact), "--config", str(config),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    encoder, classes = SentenceEncoder(), ("math", "law", PLANNER_DOMAIN, OUT_OF_DOMAIN)

    def fixed(probabilities):
        return LearnedRouter(classes, 0.25, torch.zeros(4, encoder.dim), torch.tensor(probabilities).log(), encoder.fingerprint)

    def gate(probabilities):
        return GatedRouter(fixed(probabilities), encoder, {"math": {"math": 1.0}, "law": {"law": 1.0}})

    store, manifest = BlobStore(str(tiny_artifact)), read_manifest(tiny_artifact)
    entry = stage_router(store, fixed([0.7, 0.1, 0.1, 0.1]), {n: e.domain for n, e in manifest.routable_experts().items()})
    write_manifest(store, merge(manifest, learned_router=entry))
    model, router, manifest = load_artifact(tiny_artifact)
    assert isinstance(router, GatedRouter) and router.detects_composed  # current for the experts: 'planning' is no expert's domain

    query = "what is two plus three"
    [settled] = plan_and_run(model, model.backbone.tokenizer, manifest, router, [query])
    assert settled.plan.source == "router" and settled.plan.steps == (PlanStep("math", "math", None),)
    alone = execute_plans(model, model.backbone.tokenizer, [query], [Plan((PlanStep("math", "math", None),), source="given")])[0]
    assert settled.text == alone.text and settled.steps[0].completion == alone.steps[0].completion
    [planned] = plan_and_run(model, model.backbone.tokenizer, manifest, gate([0.1, 0.2, 0.6, 0.1]), [query])
    assert planned.plan.source == "fallback"  # the planner ran (2 steps teach it no JSON) and fell back to the router's one expert
    assert planned.plan.steps == (PlanStep("law", "law", None),)  # law 0.5 of the rest


def test_planner_train_refuses_a_planner_named_like_an_expert(tiny_artifact, tmp_path, capsys):
    config = tmp_path / "planner.yaml"
    config.write_text("name: math\n")
    assert main(["planner", "train", "--artifact", str(tiny_artifact), "--config", str(config)]) == 2
    assert "'math' is already a domain expert" in capsys.readouterr().err
