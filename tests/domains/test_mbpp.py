"""MBPP problems as HumanEval-shaped code training tasks."""

import ast
import gzip
import json
import re

from ccoe.domains.code_tasks import decontaminated
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
    assert task_from_record({**RECORD, "test_list": ["assert add(1, 2) == {3, 4}"]}) is None  # a set prints in any order
    assert task_from_record({**RECORD, "test_list": ["assert add(1, 2) == " + "1+" * 3000 + "1"]}) is None  # too deep: skipped, no crash
    assert task_from_record({**RECORD, "code": "def add(a, b):\n    return " + "1+" * 3000 + "1"}) is None
    assert task_from_record({**RECORD, "text": 'Add two numbers. """ + x'}) is None  # would end the docstring
    assert task_from_record({**RECORD, "task_id": 498}) is None  # MBPP/498 (gcd) is HumanEval/13 under another name


def test_a_reference_is_kept_as_text_and_never_executed(tmp_path):
    marker = tmp_path / "ran"
    task = task_from_record({**RECORD, "code": f"open({str(marker)!r}, 'w').write('x')\ndef add(a, b):\n    return a + b"})
    assert task["response"].startswith("open(") and not marker.exists()


def test_the_reader_skips_lines_that_are_not_request_records(tmp_path):
    path = tmp_path / "requests.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"doc": RECORD}) + "\nnot json\n[1, 2]\n" + json.dumps({"doc": "x"}) + "\n")
    assert read_mbpp(path) == [RECORD]


def test_mbpp_gives_hundreds_of_distinct_tasks_and_the_code_domain_keeps_those_clear_of_humaneval():
    from ccoe.domains.code import humaneval_problems

    tasks = mbpp_tasks()
    assert 460 <= len(tasks) <= 500 and len({t["task_id"] for t in tasks}) == len(tasks)
    assert not {"MBPP/32", "MBPP/68", "MBPP/498"} & {t["task_id"] for t in tasks}
    for task in tasks:
        ast.parse(task["response"])
        assert ">>> " in task["code_prompt"] and re.search(r"^def \w+\(", task["code_prompt"], re.M)
        assert '"""' not in task["response"]
    problems = humaneval_problems()
    kept = decontaminated(tasks, problems)
    assert 420 <= len(kept) < len(tasks)  # some share an 8-word run with a HumanEval prompt (many a run of example numbers)
    by_id = {t["task_id"]: t for t in tasks}
    assert "MBPP/418" in by_id and "MBPP/418" not in {t["task_id"] for t in kept}  # Find_Max: HumanEval's find_max, ignoring case
    fake = {"code_prompt": 'def Below_Zero(ops):\n    """Tell whether a running total of the operations dips under nothing."""\n'}
    assert decontaminated([fake], problems) == []  # a HumanEval entry point in other case

