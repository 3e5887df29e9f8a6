"""Generated code exercises: examples that hold, reference bodies that agree, no HumanEval overlap."""

import random
import re

from ccoe.domains.code import humaneval_problems
from ccoe.domains.code_tasks import FAMILIES, decontaminated, draft, generated_tasks, ngrams, render_all
from ccoe.domains.sandbox import run_python


def _checks(task: dict) -> str:
    """The task's docstring examples as asserts against its response."""
    pairs = re.findall(r">>> (.+)\n\s+(.+)", task["code_prompt"])
    return "\n".join(f"assert {call} == {expected}, {call!r}" for call, expected in pairs)


def test_every_family_shows_examples_its_reference_passes_in_the_sandbox():
    rng = random.Random(7)
    tasks = render_all([draft(family, rng) for family in FAMILIES for _ in range(3)])
    program = "\n\n".join(task["response"] + "\n" + _checks(task) for task in tasks)
    assert program.count("assert ") >= 2 * len(tasks)
    result = run_python(program, timeout_s=20)
    assert result.passed, result


def test_the_reference_bodies_of_a_family_agree():
    rng = random.Random(3)
    for family in FAMILIES:
        functions = []
        for body in family.bodies:
            namespace: dict = {}
            exec("def f(" + family.params + "):\n" + "\n".join("    " + line for line in body.splitlines()), namespace)
            functions.append(namespace["f"])
        for _ in range(20):
            args = family.inputs(rng)
            results = {repr(f(*[list(a) if isinstance(a, list) else a for a in args])) for f in functions}
            assert len(results) == 1, (family.names[0], args, results)


def test_generated_tasks_are_deterministic_distinct_and_clear_of_humaneval():
    tasks = generated_tasks(400)
    assert tasks == generated_tasks(400) and len({t["code_prompt"] for t in tasks}) == 400
    problems = humaneval_problems()
    kept = decontaminated(tasks, problems)
    assert 350 <= len(kept) < 400  # a few generic phrasings share 8 words with a HumanEval prompt and are dropped
    held = set().union(*(ngrams(p["prompt"]) for p in problems))
    entry_points = {p["entry_point"] for p in problems}
    assert not any(ngrams(t["code_prompt"]) & held for t in kept)
    assert not {re.match(r"def (\w+)", t["code_prompt"])[1] for t in kept} & entry_points
    copied = {"code_prompt": "def my_func(x):\n    \"\"\"" + problems[0]["prompt"].split('"""')[1] + '"""\n', "response": ""}
    renamed = {"code_prompt": f"def {problems[5]['entry_point']}(x):\n    \"\"\"Return x.\"\"\"\n", "response": ""}
    assert decontaminated([copied, renamed, kept[0]], problems) == [kept[0]]
