"""Generated concept questions for the learned router's sql, math, law and code classes."""

import re

import pytest

from ccoe.domains.concepts import (CONCEPTS, DB_CONCEPTS, DB_PAIRS, DB_SYSTEMS, DB_SYMPTOMS, DOCTRINES, MATH_CONCEPTS, SERIES, STATEMENTS,
                                   database_questions, framework_questions, law_questions, math_questions)
from ccoe.domains.phrasings import everyday_questions


@pytest.mark.parametrize("generate", [database_questions, math_questions, law_questions, framework_questions])
def test_the_generators_give_that_many_questions_distinct_ignoring_case_the_same_for_a_seed(generate):
    questions = generate(300)
    assert len(questions) == 300 == len({q.lower() for q in questions})
    assert generate(300) == questions and generate(40) == questions[:40]
    assert generate(40, seed=1) != questions[:40]
    assert "{" not in " ".join(questions) and "}" not in " ".join(questions)  # every slot filled


def test_database_questions_mix_concepts_pairs_and_symptoms_and_tie_system_specific_ones_to_their_system():
    questions = database_questions(300)
    low = [q.lower() for q in questions]
    assert not [q for q in questions if re.search(r"\bselect\b.+\bfrom\b", q, re.I)]  # concepts, never a query to write
    concepts = sum(any(c.lower() in q for c in DB_CONCEPTS) for q in low)
    pairs = sum(any(f"{a} or {b}".lower() in q or f"{a} vs {b}".lower() in q or f"{a} and {b}".lower() in q for a, b, _ in DB_PAIRS) for q in low)
    symptoms = sum(any(s.lower() in q for s, _ in DB_SYMPTOMS) for q in low)
    assert concepts >= 100 and pairs >= 40 and symptoms >= 40, (concepts, pairs, symptoms)  # drawn 2:1:1
    assert sum(any(s.lower() in q for s in DB_SYSTEMS) for q in low) >= 200  # most name a system
    for a, b, own in DB_PAIRS:
        for q in low:
            if own and f"{a} or {b}".lower() in q or own and f"{a} vs {b}".lower() in q:
                assert own.lower() in q, q  # "InnoDB or MyISAM" only ever with MySQL
    assert all("oracle" in q for q in low if "ora-00942" in q) and all("sqlite" in q for q in low if "database is locked" in q)


def test_math_questions_cover_proofs_series_concepts_and_problems():
    questions = [q.lower() for q in math_questions(300)]
    assert sum(any(s.lower() in q for s in STATEMENTS) for q in questions) >= 60
    assert sum(any(s.lower() in q for s in SERIES) for q in questions) >= 15
    assert sum(any(c.lower() in q for c in MATH_CONCEPTS) for q in questions) >= 60
    assert any("coin flips" in q for q in questions) and any("eigenvalues of the matrix" in q for q in questions)


def test_law_questions_mix_doctrines_and_situations():
    questions = [q.lower() for q in law_questions(300)]
    doctrines = sum(any(d.lower() in q for d in DOCTRINES) for q in questions)
    assert 100 <= doctrines <= 200  # about half doctrines, half everyday situations
    assert any("h-1b" in q for q in questions) and any("without permission" in q for q in questions)
    assert not [q for q in questions if q.startswith("my ex ") and "overtime" in q]  # paired slots: who did what


def test_no_everyday_question_carries_a_domain_word():
    assert sorted(CONCEPTS) == ["code", "law", "math", "sql"]
    words = re.compile(r"\b(law|legal|lawyer|sue|court|contract|prove|theorem|converge\w*|integral|sql|database|query|python|code|"
                       r"program\w*|doctor|diagnos\w*|symptoms?|medication|dose|disease)\b")
    leaks = [q for q in everyday_questions(300) if words.search(q.lower())]
    assert not leaks, leaks[:5]
    terms = [t.lower() for t in DOCTRINES + MATH_CONCEPTS + DB_CONCEPTS]
    assert not [q for q in everyday_questions(300) if any(t in q.lower() for t in terms)]
