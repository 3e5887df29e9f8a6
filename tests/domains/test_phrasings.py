"""Generated user-style questions for the learned router's code and sql classes and its out-of-domain class."""

import pytest

from ccoe.domains.phrasings import EVERYDAY, GENERATORS, LANGUAGES, SQL_CONCEPTS, code_questions, everyday_questions, sql_questions


@pytest.mark.parametrize("generate", [code_questions, sql_questions, everyday_questions])
def test_the_generators_give_that_many_distinct_questions_the_same_for_a_seed(generate):
    questions = generate(400)
    assert len(questions) == 400 == len({q.lower() for q in questions})
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


def test_questions_are_distinct_ignoring_case_and_a_count_out_of_reach_names_its_setting():
    import random

    from ccoe.domains.phrasings import distinct_questions

    assert [q.lower() for q in distinct_questions(2, random.Random(0), iter(["x y", "z w"]).__next__)] == ["x y", "z w"]
    drawn = iter(["What is X", "what is x", "WHAT IS X", "Y"])
    assert [q.lower() for q in distinct_questions(2, random.Random(0), drawn.__next__)] == ["what is x", "y"]  # one text the encoder sees once
    with pytest.raises(ValueError, match="could draw only 1 distinct questions, 2 asked: lower `concepts`"):
        distinct_questions(2, random.Random(0), lambda: "same", "concepts")


def test_everyday_questions_fill_every_frame_and_none_is_a_domain_question():
    import re

    questions = everyday_questions(300)
    frames = [re.compile(re.escape(frame.lower()).replace(r"\{", "{").replace(r"\}", "}").format(
        **{name: ".+" for name in slots})) for frame, slots in EVERYDAY]
    assert all(any(f.fullmatch(q.lower()) for f in frames) for q in questions)
    assert {i for q in questions for i, f in enumerate(frames) if f.fullmatch(q.lower())} == set(range(len(EVERYDAY)))
    assert "{" not in " ".join(questions)
    assert not set(questions) & (set(code_questions(400)) | set(sql_questions(400)))
