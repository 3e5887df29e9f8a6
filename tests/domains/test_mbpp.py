"""MBPP problems as HumanEval-shaped code training tasks."""

import ast
import gzip
import json
import re

from ccoe.domains.code_tasks import decontaminated, ngrams
from ccoe.domains.mbpp import mbpp_tasks, read_mbpp, task_from_record

RECORD = {
    "task_id": 7, "text": "Write a  function to add\ttwo numbers.", "test_setup_code": "",
    "code": "import math\r\ndef add(a,b):\r\n\t'''Sum.'''\r\n\treturn a+b\r\n",
    "test_list": ["assert add(1,2)==3", "assert add(-1, 1) == (0)"],
}


def test_a_record_becomes_a_docstring_prompt_with_its_tests_as_examples_and_the_reference_without_docstring():
    task = task_from_record(RECORD)
    assert task["task_id"] == "MBPP/7"
    assert task["code_prompt"] == ('import math\n\ndef add(a, b):\n    """Write a function to add two numbers.\n'
                                   '    >>> add(1, 2)\n    3\n    >>> add(-1, 1)\n    0\n    """\n')
    assert task["response"] == "import math\n\ndef add(a, b):\n    return a + b"  # tabs and the docstring gone
    ast.parse(task["code_prompt"] + "    pass\n")  # a HumanEval-style prompt a body can follow


def test_records_that_cannot_be_shaped_are_skipped_never_run():
    assert task_from_record({**RECORD, "code": "def add(a, b) return a + b"}) is None  # does not parse
    assert task_from_record({**RECORD, "test_list": ["assert add(1, 2) > 2"]}) is None  # not f(...) == value
    assert task_from_record({**RECORD, "test_list": ["assert sub(1, 2) == -1"]}) is None  # names no function of the code
    assert task_from_record({**RECORD, "test_list": ["assert add(1, 2) == 3", "assert sub(1, 2) == -1"]}) is None
    assert task_from_record({**RECORD, "test_setup_code": "import os; os.system('x')"}) is None
    assert task_from_record({**RECORD, "code": 3}) is None and task_from_record({}) is None
    assert task_from_record({**RECORD, "code": "__import__('os').system('touch /tmp/pwned')\ndef add(a, b):\n    return a + b"})[
        "response"].startswith("__import__('os')")  # kept as text: parsed with ast, never executed


def test_the_reader_skips_lines_that_are_not_request_records(tmp_path):
    path = tmp_path / "requests.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"doc": RECORD}) + "\nnot json\n[1, 2]\n" + json.dumps({"doc": "x"}) + "\n")
    assert read_mbpp(path) == [RECORD]


def test_mbpp_gives_hundreds_of_distinct_tasks_and_the_code_domain_keeps_those_clear_of_humaneval():
    from ccoe.domains.code import humaneval_problems

    tasks = mbpp_tasks()
    assert 480 <= len(tasks) <= 500 and len({t["task_id"] for t in tasks}) == len(tasks)
    for task in tasks:
        ast.parse(task["response"])
        assert ">>> " in task["code_prompt"] and re.search(r"^def \w+\(", task["code_prompt"], re.M)
        assert '"""' not in task["response"]
    problems = humaneval_problems()
    kept = decontaminated(tasks, problems)
    assert 430 <= len(kept) < len(tasks)  # a few share an 8-word run (often a run of numbers) with a HumanEval prompt
    seen = set().union(*(ngrams(p["prompt"]) for p in problems))
    assert not any(ngrams(t["code_prompt"]) & seen for t in kept)
    assert not {re.search(r"^def (\w+)", t["code_prompt"], re.M)[1] for t in kept} & {p["entry_point"] for p in problems}
