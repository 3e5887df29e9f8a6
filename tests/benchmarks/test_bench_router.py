"""The router report's query sets and its near-duplicate check between the clean test and the development sets."""

import json

from benchmarks.bench_router import HELDOUT, HELDOUT_3, HELDOUT_4, HELDOUT_5, HELDOUT_6, HELDOUT_7, HELDOUT_BLIND, HELDOUT_TEST, composed_queries, heldout, near_duplicates


def test_near_duplicates_ignore_case_and_punctuation_and_keep_new_questions():
    dev = ["What's the difference between a misdemeanor and a felony?", "why is the sky blue"]
    queries = ["What is the difference between a misdemeanor and a felony", "Why is the sky blue?", "How do I braise short ribs?"]
    assert near_duplicates(queries, dev) == [True, True, False]
    assert near_duplicates(queries, dev, cutoff=0.99) == [False, True, False]


def test_the_held_out_sets_hold_25_or_40_queries_per_domain_and_25_or_100_out_of_domain():
    for path in (HELDOUT_BLIND, HELDOUT_3, HELDOUT_4):
        labels = [label for _, label in heldout(path)]
        assert len(labels) == 150 and {labels.count(d) for d in ("math", "code", "law", "medical", "sql", None)} == {25}
    for path in (HELDOUT_5, HELDOUT_6):
        labels = [label for _, label in heldout(path)]
        assert len(labels) == 225 and [labels.count(d) for d in ("math", "code", "law", "medical", "sql", None)] == [25] * 5 + [100]
    for path in (HELDOUT_7, HELDOUT_TEST):
        labels = [label for _, label in heldout(path)]
        assert len(labels) == 300 and [labels.count(d) for d in ("math", "code", "law", "medical", "sql", None)] == [40] * 5 + [100]
    assert len(heldout(HELDOUT)) == 100
    assert all(json.loads(line)["query"].strip() for line in HELDOUT_TEST.read_text().splitlines())


def test_the_composed_queries_are_the_planning_benchmarks_and_none_is_a_router_training_query():
    from ccoe.config import LearnedRouterSpec
    from ccoe.domains.composed import composed_tasks

    queries = composed_queries()
    spec = LearnedRouterSpec()
    assert len(queries) == 80 and not set(queries) & {t.query for t in composed_tasks(spec.composed_seed, spec.composed)}
