"""The five domains: deterministic disjoint splits, scorers, the sandbox, and the gate's rules."""

import ast
import uuid
from pathlib import Path

import pytest

from ccoe.config import RouterSpec, load_yaml
from ccoe.domains import DOMAINS, eval_items, labelled_routing_queries, prepare, router_spec
from ccoe.domains.base import read_jsonl
from ccoe.domains.math import final_number
from ccoe.domains.sandbox import run_python
from ccoe.domains.sql import database_path, extract_sql, run_readonly
from ccoe.router import RuleRouter
from tests.test_router import LABELLED, ROUTER_YAML


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_splits_are_deterministic_and_disjoint(name):
    domain = DOMAINS[name]
    first, second = domain.build(), domain.build()
    assert first == second
    files = prepare([name])[name]
    train, held = read_jsonl(files.train), read_jsonl(files.eval)
    assert train and held
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    fields = {"prompt", "response", "choices", "answer"} if domain.task == "choice" else {"prompt", "response"}
    assert all(set(r) == fields for r in train)
    if domain.task == "choice":  # the response is the right option, so the lm and choice objectives agree
        assert all(r["response"] == r["choices"][r["answer"]] for r in train)


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_scorers_accept_gold_answers(name):
    domain = DOMAINS[name]
    items = eval_items(name)[:12]
    for item in items:
        output = item["answer"] if domain.task == "choice" else item["response"]
        assert domain.score(item, output) == 1.0, item["prompt"][-200:]


def test_wrong_answers_score_zero():
    math_item = eval_items("math")[0]
    assert DOMAINS["math"].score(math_item, f"The answer is {int(math_item['answer']) + 1}.") == 0.0
    for name in ("law", "medical"):
        item = eval_items(name)[0]
        assert DOMAINS[name].score(item, (item["answer"] + 1) % len(item["choices"])) == 0.0
    sql_item = eval_items("sql")[0]
    assert DOMAINS["sql"].score(sql_item, "SELECT COUNT(*) FROM artist") == 0.0
    assert DOMAINS["sql"].score(sql_item, "DROP TABLE artist") == 0.0
    assert DOMAINS["sql"].score(sql_item, "no query here") == 0.0
    code_item = eval_items("code")[0]
    assert DOMAINS["code"].score(code_item, "```python\n" + code_item["code_prompt"] + "    return None\n```") == 0.0


def test_a_failed_code_answer_is_named_by_what_ended_its_program():
    """`CodeDomain.failure` tells a wrong answer (a test's assert) from code that never ran or called what it
    never defined, and a hang from both; the gold solution is "passed"."""
    from ccoe.domains.code import CodeDomain

    item, code = eval_items("code")[0], CodeDomain(timeout_s=1.0)
    body = item["code_prompt"]
    assert code.failure(item, item["response"]) == "passed"
    assert code.failure(item, f"```python\n{body}    return None\n```") == "AssertionError"
    assert code.failure(item, f"```python\n{body}    return helper(numbers)\n```") == "NameError"
    assert code.failure(item, f"```python\n{body}    return (\n```") == "SyntaxError"
    assert code.failure(item, f"```python\n{body}        return 1\n```") == "IndentationError"
    assert code.failure(item, f"```python\n{body}    while True:\n        pass\n```") == "timeout"
    assert code.failure(item, f"```python\n{body}    raise SystemExit(3)\n```") == "exit 3"


def test_final_number_and_sql_extraction():
    assert final_number("12 + 30 = 42\nThe answer is 1,042.") == "1042"
    assert final_number("no digits") is None
    assert extract_sql("Here:\n```sql\nSELECT 1;\n```") == "SELECT 1"
    assert extract_sql("The query is SELECT name FROM artist; done") == "SELECT name FROM artist"


def test_chinook_is_complete_and_read_only():
    db = database_path()
    assert run_readonly(db, "SELECT COUNT(*), ROUND(SUM(total), 2) FROM invoice") == [(412, 2328.6)]
    assert run_readonly(db, "SELECT COUNT(*) FROM track") == [(3503,)]
    with pytest.raises(Exception, match="readonly|read-only|attempt to write"):
        run_readonly(db, "DELETE FROM artist")
    with pytest.raises(Exception, match="interrupted"):
        run_readonly(db, "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r", time_limit_s=0.5)


def test_sandbox_kills_infinite_loops_and_confines_writes(tmp_path):
    assert run_python("print('ok')").passed
    looping = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert looping.timed_out and not looping.passed
    outside = Path("/tmp") / f"ccoe-escape-{uuid.uuid4().hex}"
    escape = run_python(f"open({str(outside)!r}, 'w').write('x')\n")
    assert not escape.passed and "sandbox" in escape.output and not outside.exists()
    assert run_python("open('inside.txt', 'w').write('x')\nassert open('inside.txt').read() == 'x'\n").passed
    for attempt in ("import socket\nsocket.create_connection(('127.0.0.1', 9))",
                    "import subprocess\nsubprocess.run(['true'])",
                    "import os\nos.system('true')",
                    "import os\nos.remove('/etc/hostname')",
                    "import ctypes\nctypes.CDLL(None)"):
        result = run_python(attempt)
        assert not result.passed and "sandbox" in result.output, attempt


def test_router_rules_reach_95_percent_on_labelled_queries():
    router = RuleRouter(router_spec())
    labelled = labelled_routing_queries() + [(q, d) for q, d in LABELLED if d is not None]
    wrong = [(q, want, router.route(q).domain) for q, want in labelled if router.route(q).domain != want]
    assert len(labelled) >= 40
    assert 1 - len(wrong) / len(labelled) >= 0.95, wrong


def test_shipped_router_config_matches_the_domains():
    assert load_yaml(RouterSpec, ROUTER_YAML) == router_spec()


def test_a_held_out_code_row_is_scored_on_its_docstring_examples():
    """`CodeDomain.validation_item` turns the `>>>` examples of a training-shaped prompt into the item's
    tests: every held-out row's own response passes them, a wrong body fails, and a row without examples
    (a stdlib function) or a prompt not framed like training gives None."""
    from ccoe.data import validation_items
    from ccoe.domains import train_data_spec
    from ccoe.domains.code import CODE, frame, stdlib_functions

    rows = validation_items(train_data_spec("code", max_length=384, val_fraction=0.2))
    items = [item for row in rows if (item := CODE.validation_item(row)) is not None]
    assert 100 <= len(items) < len(rows)
    assert all(CODE.failure(item, item["response"]) == "passed" for item in items)
    item = CODE.validation_item({"prompt": frame('def twice(x):\n    """Double it.\n    >>> twice(2)\n    4\n    >>> twice(\'a\')\n    \'aa\'\n    """\n'),
                                 "response": "unused"})
    assert item["entry_point"] == "twice" and item["test"] == "def check(candidate):\n    assert twice(2) == 4\n    assert twice('a') == 'aa'\n"
    assert CODE.score(item, "```python\ndef twice(x):\n    return x * 2\n```") == 1.0
    assert CODE.failure(item, "```python\ndef twice(x):\n    return x + x if x else 0\n```") == "passed"
    assert CODE.failure(item, "```python\ndef twice(x):\n    return x\n```") == "AssertionError"
    assert CODE.validation_item(stdlib_functions(1)[0]) is None
    assert CODE.validation_item({"prompt": "def twice(x):\n    >>> twice(2)\n    4", "response": ""}) is None


def test_scorable_rows_are_those_the_domains_scorer_can_score():
    """Choice rows keep their options and answer (rows without them are left out); code rows become items
    through `validation_item`; math, with no `validation_item`, scores none."""
    from ccoe.domains.base import scorable_rows
    from ccoe.domains.code import frame

    choice = {"prompt": "q", "response": "A. x", "choices": ["A. x", "B. y"], "answer": 0}
    assert scorable_rows(DOMAINS["law"], [choice, {"prompt": "q", "response": "x"}]) == [choice]
    shown = {"prompt": frame('def one():\n    """One.\n    >>> one()\n    1\n    """\n'), "response": "```python\ndef one():\n    return 1\n```"}
    bare = {"prompt": frame('def one():\n    """One."""\n'), "response": "x"}
    assert scorable_rows(DOMAINS["code"], [shown, bare]) == [DOMAINS["code"].validation_item(shown)]
    assert scorable_rows(DOMAINS["math"], [{"prompt": "1 + 1?", "response": "2"}]) == []


def test_code_training_rows_are_self_contained_functions_without_their_docstring():
    from ccoe.domains.code import extract_code, free_names, stdlib_functions

    rows = stdlib_functions(2000)
    assert len(rows) >= 100
    for row in rows:
        (function,) = ast.parse(extract_code(row["response"])).body
        assert isinstance(function, ast.FunctionDef) and ast.get_docstring(function) is None and free_names(function) == set()
        assert f"def {function.name}" in row["prompt"] and ('"""' in row["prompt"] or "'''" in row["prompt"])
    uses_helper = ast.parse("def f(x):\n    return helper(x) + len(x)\n").body[0]
    assert free_names(uses_helper) == {"helper"}


def test_complete_means_more_text_cannot_change_the_answer():
    from ccoe.domains.code import CODE, extract_code
    from ccoe.domains.sql import SQL, extract_sql

    for domain, extract, text in ((CODE, extract_code, "Here:\n```python\ndef f(x):\n    return x\n```"),
                                  (SQL, extract_sql, "```sql\nSELECT name FROM artist\n```")):
        for cut in range(len(text)):
            assert not domain.complete(text[:cut])  # the block is not closed yet
        assert domain.complete(text)
        for more in ("\nThen ```python\ndef g(): pass\n```", " and SELECT 1;", "``` trailing"):
            assert extract(text + more) == extract(text)
    assert not DOMAINS["math"].complete("The answer is 5.")  # a later number would change it
