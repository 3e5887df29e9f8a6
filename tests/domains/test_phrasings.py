"""Generated user-style questions for the learned router's code and sql classes."""

import pytest

from ccoe.domains.phrasings import GENERATORS, LANGUAGES, SQL_CONCEPTS, code_questions, sql_questions


@pytest.mark.parametrize("generate", [code_questions, sql_questions])
def test_the_generators_give_that_many_distinct_questions_the_same_for_a_seed(generate):
    questions = generate(400)
    assert len(questions) == 400 == len(set(questions))
    assert generate(400) == questions and generate(50) == questions[:50]
    assert generate(50, seed=1) != questions[:50]


def test_code_questions_name_a_language_or_tool_and_sql_questions_a_table_or_a_concept():
    tools = ("git", "docker", "npm", "pip", "react", "css", "pandas", "kubernetes", "vs code", "regex")
    for question in code_questions(300):
        low = question.lower()
        assert any(lang.lower() in low for lang in LANGUAGES) or any(tool in low for tool in tools), question
    sql = sql_questions(300)
    assert {q.lower() for q in SQL_CONCEPTS} & {q.lower() for q in sql}
    assert all("sql" in q.lower() or "query" in q.lower() or q.lower() in {c.lower() for c in SQL_CONCEPTS} for q in sql)
    assert sorted(GENERATORS) == ["code", "sql"]


def test_a_count_the_generator_cannot_reach_is_an_error_not_an_endless_loop():
    import random

    from ccoe.domains.phrasings import _distinct

    assert [q.lower() for q in _distinct(2, random.Random(0), iter(["x y", "z w"]).__next__)] == ["x y", "z w"]
    with pytest.raises(ValueError, match="could draw only 2 distinct questions, 3 asked"):
        _distinct(3, random.Random(0), lambda: "same")  # "Same" and "same": two at most
