"""Generated concept questions for the learned router's sql, math, law and code classes."""

import re

import pytest

from ccoe.domains.concepts import (CONCEPTS, DB_SYSTEMS, DOCTRINES, MATH_CONCEPTS, STATEMENTS, database_questions, framework_questions,
                                   law_questions, math_questions)
from ccoe.domains.phrasings import code_questions, everyday_questions, sql_questions


@pytest.mark.parametrize("generate", [database_questions, math_questions, law_questions, framework_questions])
def test_the_generators_give_that_many_distinct_questions_the_same_for_a_seed(generate):
    questions = generate(300)
    assert len(questions) == 300 == len(set(questions))
    assert generate(300) == questions and generate(40) == questions[:40]
    assert generate(40, seed=1) != questions[:40]
    assert "{" not in " ".join(questions) and "}" not in " ".join(questions)  # every slot filled


def test_database_questions_name_a_system_and_write_no_query():
    questions = database_questions(300)
    systems = [s.lower() for s in DB_SYSTEMS] + ["databases", "a database"]
    assert all(any(s in q.lower() for s in systems) for q in questions)
    assert not [q for q in questions if re.search(r"\bselect\b.+\bfrom\b", q, re.I)]  # concepts, never a query to write
    kinds = {"concept": r"^(what is|can someone|how does|when should|eli5|is )|actually do", "pair": r" vs | or |difference between",
             "symptom": r"^(why does|why would|how do i stop)"}
    assert all(any(re.search(k, q, re.I) for q in questions) for k in kinds.values())


def test_math_questions_cover_proofs_series_concepts_and_problems():
    questions = [q.lower() for q in math_questions(300)]
    assert sum(any(s.lower() in q for s in STATEMENTS) for q in questions) >= 40
    assert sum("the sum of" in q and "conver" in q for q in questions) >= 10
    assert sum(any(c.lower() in q for c in MATH_CONCEPTS) for q in questions) >= 40
    assert any("coin flips" in q for q in questions) and any("eigenvalues of the matrix" in q for q in questions)


def test_law_questions_mix_doctrines_and_situations():
    questions = [q.lower() for q in law_questions(300)]
    doctrines = sum(any(d.lower() in q for d in DOCTRINES) for q in questions)
    assert 100 <= doctrines <= 200  # about half doctrines, half everyday situations
    assert any("h-1b" in q for q in questions) and any("without permission" in q for q in questions)


def test_concepts_are_new_texts_for_their_classes_and_never_everyday_ones():
    assert sorted(CONCEPTS) == ["code", "law", "math", "sql"]
    everyday = set(everyday_questions(300))
    for domain, generate in CONCEPTS.items():
        assert not set(generate(300)) & everyday, domain
    assert not set(database_questions(300)) & set(sql_questions(300))
    assert not set(framework_questions(300)) & set(code_questions(300))
