from pathlib import Path

import pytest

from ccoe.config import RouterSpec, load_yaml
from ccoe.router import RuleRouter

ROUTER_YAML = Path(__file__).resolve().parent.parent / "configs" / "router.yaml"

LABELLED = [
    ("What is 45 + 17?", "math"),
    ("A train travels 120 km in 2 hours. How many km per hour is that on average?", "math"),
    ("Calculate 15% of 240 dollars.", "math"),
    ("Write a Python function that checks whether a number is prime.", "code"),
    ("def fib(n): how do I make this recursion faster?", "code"),
    ("Fix the bug in this loop that never returns.", "code"),
    ("Write a SQL query to count invoices per customer.", "sql"),
    ("Which artists have more than 10 albums in the database?", "sql"),
    ("SELECT name FROM tracks WHERE milliseconds > 300000", "sql"),
    ("Is the defendant liable for negligence if the plaintiff trespassed?", "law"),
    ("What damages can be recovered for breach of contract?", "law"),
    ("Explain the statute of limitations for a defamation lawsuit.", "law"),
    ("What is the recommended dose of amoxicillin for a child with otitis?", "medical"),
    ("A patient presents with fever and chest pain. What is the diagnosis?", "medical"),
    ("Which drug is first-line treatment for hypertension?", "medical"),
    ("Tell me a poem about autumn leaves.", None),
    ("Who won the football match yesterday?", None),
]


@pytest.fixture
def router():
    return RuleRouter(load_yaml(RouterSpec, ROUTER_YAML))


def test_labelled_queries_route_to_their_domain_expert(router):
    wrong = [(q, want, router.route(q).expert) for q, want in LABELLED if router.route(q).expert != want]
    assert not wrong, wrong


def test_decisions_explain_themselves(router):
    decision = router.route("Write a SQL query to count invoices per customer.")
    assert decision.expert == "sql" and decision.domain == "sql"
    assert decision.rule in {"keyword 'sql'", "keyword 'query'", "keyword 'invoices'", "keyword 'customer'"}
    assert "M['sql', 'sql'] = 1" in decision.reason
    assert decision.scores["sql"] > decision.scores["math"]
    assert "no domain reached min_score" in router.route("hello there").reason


def test_mapping_matrix_and_unloaded_experts():
    spec = load_yaml(RouterSpec, ROUTER_YAML)
    mapping = {**spec.mapping, "code": {"code": 1.0, "sql": 0.3}}  # the code expert also serves SQL, second choice
    router = RuleRouter(spec.model_copy(update={"mapping": mapping}))
    matrix = router.mapping_matrix()
    assert (len(matrix), {len(row) for row in matrix}) == (5, {5})
    assert matrix[router.experts.index("code")][router.domains.index("sql")] == pytest.approx(0.3)
    query = "Write a SQL query to count invoices per customer."
    assert router.route(query, available=["code", "math"]).expert == "code"  # M[code, sql] = 0.3 > 0
    fallback = router.route(query, available=["math"])
    assert fallback.expert is None and fallback.domain == "sql" and "no loaded expert" in fallback.reason


def test_keywords_match_whole_words_only():
    router = RuleRouter(RouterSpec(domains={"law": {"keywords": ["sue"]}}, mapping={"law": {"law": 1.0}}))
    assert router.route("I will sue them").expert == "law"
    assert router.route("the issue is pursued").expert is None


def test_ties_go_to_the_domain_listed_first():
    spec = RouterSpec(domains={"a": {"keywords": ["x"]}, "b": {"keywords": ["x"]}}, mapping={"ea": {"a": 1}, "eb": {"b": 1}})
    assert RuleRouter(spec).route("x").expert == "ea"


def test_router_spec_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        RouterSpec(domains={"math": {"patterns": ["(unclosed"]}})
    with pytest.raises(ValueError, match="names domain 'lw', which has no rules"):
        RouterSpec(domains={"law": {"keywords": ["law"]}}, mapping={"law": {"lw": 1.0}})
    with pytest.raises(ValueError, match=">= 0"):
        RouterSpec(domains={"law": {}}, mapping={"law": {"law": -1.0}})
