"""The learned router: training set, blob round trip and refusals, the gate's stages, the manifest entry,
staleness after pop-and-push, and `ccoe router train` + `ccoe route --file` on an artifact folder.

Uses the real sentence encoder (installed by `make setup`); the classifier is trained on a few prompts."""

import json
from dataclasses import replace

import pytest
import torch

from ccoe.artifact import expert_mapping, router_from_manifest, stage_router
from ccoe.cli import main
from ccoe.config import LearnedRouterSpec, RouterSpec, load_yaml
from ccoe.learned_router import (
    OUT_OF_DOMAIN, GatedRouter, LearnedRouter, SentenceEncoder, prompt_views, read_queries, train_learned_router, training_set,
)
from ccoe.manifest import PLANNER_DOMAIN, merge, pop, read_manifest, write_manifest
from ccoe.router import RuleRouter
from ccoe.storage import BlobStore
from tests.conftest import save_tiny_artifact
from tests.test_router import ROUTER_YAML

MATH = ["What is 12 plus 30?", "Solve 2x + 4 = 10 for x.", "What is the area of a square with side 5?", "Compute 7 times 8.",
        "A shop sells apples at 3 dollars each. How much do 4 apples cost?", "What is 15 percent of 80?"]
LAW = ["Is a landlord liable when a tenant slips on an icy stair?", "What are the elements of negligence in tort law?",
       "Can a contract signed under duress be enforced?", "What is strict liability for abnormally dangerous activities?",
       "Does a store owe a duty of care to a trespasser?", "What damages can a plaintiff recover for defamation?"]
GENERAL = ["Write a short poem about the sea.", "What is the capital of France?", "Recommend a film for a rainy evening.",
           "How do I bake bread at home?", "Tell me a fun fact about owls.", "Which band sang Yellow Submarine?"]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


@pytest.fixture(scope="module")
def fitted(encoder):
    spec = LearnedRouterSpec(per_domain=10)
    return train_learned_router(encoder, training_set({"math": MATH, "law": LAW}, GENERAL, spec), spec)


def test_prompt_views_are_the_prompt_its_first_paragraph_and_first_sentence():
    text = "A tenant slips. Who pays?\n\nA. The landlord\nB. Nobody"
    assert prompt_views(text) == [text, "A tenant slips. Who pays?", "A tenant slips."]
    assert prompt_views("Just one") == ["Just one"]


def test_the_training_set_has_the_domains_then_out_of_domain_and_caps_each_domain():
    data = training_set({"math": MATH, "law": LAW}, GENERAL, LearnedRouterSpec(per_domain=10, views=False))
    assert data.classes == ("math", "law", OUT_OF_DOMAIN)
    assert [data.labels.count(i) for i in range(3)] == [6, 6, 6]
    capped = training_set({"math": MATH, "law": LAW}, GENERAL, LearnedRouterSpec(per_domain=10, views=False).model_copy(update={"per_domain": 3}))
    assert capped.labels.count(0) == 3 and set(capped.texts[:3]) <= set(MATH)
    with pytest.raises(ValueError, match="no training prompts for class 'law'"):
        training_set({"math": MATH, "law": []}, GENERAL, LearnedRouterSpec())


COMPOSED = ["How many customers are from Brazil? Call the answer N. A shop sells N pens at 3 dollars each. How much do they cost?",
            "Count the albums by AC/DC. Let N be that number. Ravi has N boxes of 6 eggs. How many eggs does he have?"]


def test_composed_queries_are_the_planning_class_learned_whole_and_planning_is_no_domain():
    data = training_set({"math": MATH, "law": LAW}, GENERAL, LearnedRouterSpec(per_domain=10), composed=COMPOSED)
    assert data.classes == ("math", "law", PLANNER_DOMAIN, OUT_OF_DOMAIN)
    assert [t for t, label in zip(data.texts, data.labels) if label == 2] == COMPOSED  # no first-sentence views: those are sql questions
    assert data.labels.count(0) > len(MATH)  # the domains keep their views
    assert training_set({"math": MATH}, GENERAL, LearnedRouterSpec(per_domain=10)).classes == ("math", OUT_OF_DOMAIN)
    with pytest.raises(ValueError, match="the planner's domain, not a routing target"):
        training_set({PLANNER_DOMAIN: MATH}, GENERAL, LearnedRouterSpec(per_domain=10))


def _fixed(probabilities, classes, threshold=0.25):
    """A router whose every query gets these class probabilities (bias only)."""
    return LearnedRouter(classes, threshold, torch.zeros(len(classes), 384), torch.tensor(probabilities).log(), "f" * 64)


def test_a_router_that_knows_composed_queries_flags_them_and_still_routes_them_to_one_expert(encoder):
    classes = ("math", "sql", PLANNER_DOMAIN, OUT_OF_DOMAIN)
    mapping = {"m": {"math": 1.0}, "s": {"sql": 1.0}}
    router = _fixed([0.2, 0.1, 0.6, 0.1], classes)
    gated = GatedRouter(replace(router, encoder_fingerprint=encoder.fingerprint), encoder, mapping)
    assert gated.detects_composed
    decision = gated.route("Count the customers from Brazil, then multiply by 3.")
    assert decision.composed and (decision.stage, decision.domain, decision.expert) == ("learned", "math", "m")
    assert decision.top[0] == (PLANNER_DOMAIN, 0.6) and decision.as_dict()["composed"] is True
    assert "several experts needed (planning 0.60); as one expert: math (math 0.50, sql 0.25, out-of-domain 0.25)" in decision.reason
    single = GatedRouter(replace(_fixed([0.6, 0.1, 0.2, 0.1], classes), encoder_fingerprint=encoder.fingerprint), encoder, mapping)
    one = single.route("What is 9 plus 16?")
    assert not one.composed and (one.domain, one.expert) == ("math", "m") and one.reason.startswith("learned router: math (math 0.75")
    unsure = GatedRouter(replace(router, threshold=0.7, encoder_fingerprint=encoder.fingerprint), encoder, mapping)
    below = unsure.route("Count the customers from Brazil, then multiply by 3.")
    assert not below.composed and below.stage == "backbone"  # planning under the threshold is no judgement
    plain = GatedRouter(replace(_fixed([0.6, 0.3, 0.1], ("math", "sql", OUT_OF_DOMAIN)), encoder_fingerprint=encoder.fingerprint), encoder, mapping)
    assert not plain.detects_composed and not plain.route("What is 9 plus 16?").composed
    assert RuleRouter(RouterSpec(domains={}, mapping={})).detects_composed is False  # rules never flag a composed query


def test_extra_wordings_join_their_domain_whole_beside_the_capped_sample():
    extra = {"law": ["My landlord keeps my deposit.", LAW[0]], "sql": ["not a class here"]}
    spec = LearnedRouterSpec(views=False).model_copy(update={"per_domain": 3})
    capped = training_set({"math": MATH, "law": LAW}, GENERAL, spec)
    data = training_set({"math": MATH, "law": LAW}, GENERAL, spec, extra)
    sample = [text for text, label in zip(capped.texts, capped.labels) if label == 1]
    law = [text for text, label in zip(data.texts, data.labels) if label == 1]
    assert law == list(dict.fromkeys(sample + extra["law"]))  # the same sample, then every extra once
    assert "not a class here" not in data.texts and data.classes == ("math", "law", OUT_OF_DOMAIN)


def test_every_built_in_domain_has_other_wordings_from_the_offline_sets():
    from ccoe.domains import DOMAINS
    from ccoe.domains.general import domain_examples, general_prompts

    examples = domain_examples(DOMAINS, per_set=5)
    assert sorted(examples) == sorted(DOMAINS) and all(len(v) >= 5 for v in examples.values())
    assert domain_examples(DOMAINS, per_set=0) == {}
    assert not set().union(*examples.values()) & set(general_prompts(40))  # never also out-of-domain


def test_router_examples_take_every_offline_source_and_keep_the_classes_disjoint():
    from ccoe.domains import DOMAINS
    from ccoe.domains.general import domain_examples, general_prompts, router_examples, topic_questions
    from ccoe.domains.concepts import database_questions, framework_questions, law_questions, math_questions
    from ccoe.domains.phrasings import code_questions, everyday_questions, sql_questions

    spec = LearnedRouterSpec(per_domain_set=2, per_general_set=2, per_user_set=3, per_domain_topic=2, per_general_topic=1, generated=5, concepts=4)
    examples = router_examples(DOMAINS, spec)
    assert "Are benign brain tumors serious?" in examples.extra["medical"]  # healthsearchqa's first question
    assert "how does rivatigmine and otc sleep medicine interact" in examples.extra["medical"]  # MedicationQA's
    law = examples.extra["law"]
    start = law.index("Will Google help me if I think someone has taken and used content Ive created without my permission?")
    assert law[start:start + 3] == ["Will Google help me if I think someone has taken and used content Ive created without my permission?",
                                          "Will Google come to a users assistance in the event of an alleged violation of such users IP rights?",
                                          "Does Google require the consent of a third party who created content displayed in Google News in order "
                                          "for another person to obtain the right to use such third partys content?"]
    assert examples.extra["code"][-9:] == code_questions(5) + framework_questions(4)  # generated how-to, then concept questions
    assert examples.extra["sql"][-9:] == sql_questions(5) + database_questions(4)
    assert examples.extra["law"][-4:] == law_questions(4)
    without = router_examples(DOMAINS, spec.model_copy(update={"concepts": 0}))
    assert without.extra["medical"] == examples.extra["medical"] and without.extra["math"] == examples.extra["math"][:-4]  # no medical generator
    mmlu = topic_questions("math", 2)
    assert len(mmlu) == 2 * 5 and examples.extra["math"][-14:] == mmlu + math_questions(4)  # 2 per MMLU topic, then concept questions
    assert not set(mmlu) & set(topic_questions(None, 50))
    assert "How to deposit a cheque issued to an associate in my business into my business account?" in examples.general  # FiQA
    assert "on the 6th day of christmas my true love sent to me" in examples.general  # NQ-open
    assert set(general_prompts(2)) <= set(examples.general)
    assert not set().union(*examples.extra.values()) & set(examples.general)
    only_registry = router_examples(DOMAINS, spec.model_copy(update={"per_user_set": 0, "per_domain_topic": 0, "per_general_topic": 0, "generated": 0, "concepts": 0}))
    assert only_registry.extra == domain_examples(DOMAINS, 2) and only_registry.general == general_prompts(2)
    assert router_examples(["sql"], spec).extra == {"sql": domain_examples(["sql"], 2)["sql"] + sql_questions(5) + database_questions(4)}
    assert examples.general[-5:] == everyday_questions(5)  # generated everyday questions, out of domain


def test_a_router_learns_composed_queries_only_for_a_planner_over_sql_and_math():
    from ccoe.domains.composed import composed_tasks
    from ccoe.domains.general import learns_composed, router_examples

    spec = LearnedRouterSpec(per_domain_set=0, per_general_set=1, per_user_set=0, per_domain_topic=0, per_general_topic=0, generated=0, concepts=0, composed=4)
    assert router_examples(["math", "sql"], spec).composed == []  # no planner
    planned = router_examples(["math", "sql", "law"], spec, planning=True)
    assert planned.composed == [t.query for t in composed_tasks(0, 4)] == [t.query for t in composed_tasks(0, 600)][:4]  # the planner's own
    assert router_examples(["math", "law"], spec, planning=True).composed == []  # the planner composes only sql -> math
    assert not learns_composed(["math", "sql"], spec.model_copy(update={"composed": 0}), planning=True)
    assert learns_composed(["sql", "math"], spec, planning=True) and not learns_composed(["sql", "math"], spec, planning=False)


def test_the_router_learns_the_domains_and_sends_general_questions_to_the_backbone(fitted, encoder):
    assert fitted.train_accuracy == 1.0
    probabilities = fitted.router.probabilities(encoder.embed(["What is 9 plus 16?", "Is the landlord liable for the fall?", "Write a poem about the moon."]))
    assert probabilities.shape == (3, 3)
    assert probabilities.argmax(-1).tolist() == [0, 1, 2]
    assert torch.allclose(probabilities.sum(-1), torch.ones(3))


def test_a_router_blob_round_trips_and_bad_blobs_are_refused(fitted, encoder):
    router = fitted.router
    again = LearnedRouter.from_bytes(router.to_bytes(), encoder.fingerprint, encoder.dim)
    assert again.classes == router.classes and again.threshold == router.threshold
    assert torch.equal(again.weight, router.weight) and torch.equal(again.bias, router.bias)
    assert again.to_bytes() == router.to_bytes()
    with pytest.raises(ValueError, match="trained on encoder weights"):
        LearnedRouter.from_bytes(router.to_bytes(), "0" * 64, encoder.dim)
    with pytest.raises(ValueError, match="shape"):
        LearnedRouter.from_bytes(router.to_bytes(), encoder.fingerprint, 100)
    nan = replace(router, bias=torch.full_like(router.bias, float("nan")))
    with pytest.raises(ValueError, match="non-finite"):
        LearnedRouter.from_bytes(nan.to_bytes(), encoder.fingerprint, encoder.dim)
    hostile = replace(router, classes=("../etc", "law", OUT_OF_DOMAIN))
    with pytest.raises(ValueError, match="invalid router domain"):
        LearnedRouter.from_bytes(hostile.to_bytes(), encoder.fingerprint, encoder.dim)
    with pytest.raises(ValueError, match="not a ccoe router blob"):
        LearnedRouter.from_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}", encoder.fingerprint, encoder.dim)


def test_the_fitted_router_votes_with_its_training_texts_and_round_trips_them_exactly(fitted, encoder):
    router = fitted.router
    assert router.neighbours is not None and router.neighbours.k == 40 and router.out_of_domain_weight == 1.5
    assert router.neighbours.examples.shape[1] == encoder.dim
    assert torch.equal(router.neighbours.examples, router.neighbours.examples.half().float())  # held as stored
    again = LearnedRouter.from_bytes(router.to_bytes(), encoder.fingerprint, encoder.dim)
    queries = encoder.embed(["What is 9 plus 16?", "Is the landlord liable for the fall?", "Write a poem about the moon."])
    assert torch.equal(again.probabilities(queries), router.probabilities(queries))
    assert torch.equal(again.neighbours.labels, router.neighbours.labels) and again.to_bytes() == router.to_bytes()


def test_the_vote_is_class_balanced_and_mixed_then_the_out_of_domain_weight_applies():
    from ccoe.learned_router import Neighbours

    examples = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0.01, 0], [1.0, 0, 0.01], [0, 1.0, 0]]), dim=-1)
    labels = torch.tensor([0, 0, 0, 1])  # class 0 has three examples, class 1 one, class 2 (out of domain) none
    vote = Neighbours.of(examples, labels, k=4, weight=1.0, temperature=1e6)  # flat softmax: every neighbour counts the same
    shares = vote.vote(torch.tensor([[0.0, 0.0, 1.0]]), 3)
    assert torch.allclose(shares, torch.tensor([[0.5, 0.5, 0.0]]))  # 3 x (1/3 weight) vs 1 x 1: balanced
    sharp = Neighbours.of(examples, labels, k=1, weight=1.0, temperature=0.1).vote(torch.tensor([[0.0, 1.0, 0.0]]), 3)
    assert sharp.tolist() == [[0.0, 1.0, 0.0]]
    linear = LearnedRouter(("a", "b", OUT_OF_DOMAIN), 0.5, torch.zeros(3, 3), torch.zeros(3), "f" * 64)
    assert torch.allclose(linear.probabilities(torch.tensor([[0.0, 1.0, 0.0]])), torch.full((1, 3), 1 / 3))
    mixed = replace(linear, neighbours=replace(vote, k=1, temperature=0.1, weight=0.3), out_of_domain_weight=2.0)
    p = mixed.probabilities(torch.tensor([[0.0, 1.0, 0.0]]))
    raw = torch.tensor([0.7 / 3, 0.7 / 3 + 0.3, 2 * 0.7 / 3])  # 0.7 linear + 0.3 vote, out-of-domain doubled
    assert torch.allclose(p, (raw / raw.sum()).unsqueeze(0))


def test_a_router_blob_without_neighbours_is_the_linear_head_and_bad_neighbours_are_refused(fitted, encoder):
    from safetensors.torch import save as save_tensors

    from ccoe.expert import canonical_header
    from ccoe.learned_router import Neighbours

    router = fitted.router
    old = {"ccoe_format": "ccoe-router/1", "classes": json.dumps(list(router.classes)), "threshold": "0.6", "encoder": "all-MiniLM-L6-v2",
           "encoder_fingerprint": router.encoder_fingerprint}  # written before the vote existed
    linear = LearnedRouter.from_bytes(canonical_header(save_tensors({"weight": router.weight, "bias": router.bias}, metadata=old)),
                                      encoder.fingerprint, encoder.dim)
    assert linear.neighbours is None and linear.out_of_domain_weight == 1.0
    query = encoder.embed(["What is 9 plus 16?"])
    assert torch.equal(linear.probabilities(query), torch.softmax(query @ router.weight.T + router.bias, -1))
    n = router.neighbours
    bad_labels = replace(router, neighbours=Neighbours(n.examples, torch.full_like(n.labels, 7), n.k, n.weight, n.temperature))
    with pytest.raises(ValueError, match="class indices"):
        LearnedRouter.from_bytes(bad_labels.to_bytes(), encoder.fingerprint, encoder.dim)
    with pytest.raises(ValueError, match="neighbour settings"):
        LearnedRouter.from_bytes(replace(router, neighbours=replace(n, temperature=-1.0)).to_bytes(), encoder.fingerprint, encoder.dim)
    with pytest.raises(ValueError, match="out_of_domain_weight"):
        LearnedRouter.from_bytes(replace(router, out_of_domain_weight=0.0).to_bytes(), encoder.fingerprint, encoder.dim)
    short = replace(router, neighbours=replace(n, labels=n.labels[:-1]))
    with pytest.raises(ValueError, match="example_labels"):
        LearnedRouter.from_bytes(short.to_bytes(), encoder.fingerprint, encoder.dim)


def test_the_gate_decides_by_the_learned_router_then_the_rules_then_the_backbone(fitted, encoder):
    rules = RuleRouter(load_yaml(RouterSpec, ROUTER_YAML))
    gated = GatedRouter(fitted.router, encoder, {"math": {"math": 1.0}, "law": {"law": 1.0}}, rules)
    learned, general = gated.route_many(["What is 9 plus 16?", "Write a poem about the moon."])
    assert (learned.stage, learned.expert, learned.domain) == ("learned", "math", "math")
    assert learned.top[0][0] == "math" and sorted(c for c, _ in learned.top) == sorted(fitted.router.classes)
    assert learned.top[0][1] >= learned.top[1][1] >= learned.top[2][1] and "learned router: math" in learned.reason
    assert (general.stage, general.expert) == ("learned", None) and "out of domain" in general.reason

    unsure = GatedRouter(replace(fitted.router, threshold=0.999), encoder, {"math": {"math": 1.0}, "law": {"law": 1.0}}, rules)
    ruled, nothing = unsure.route_many(["what is the sum of two and three", "Write a poem about the moon."])
    assert (ruled.stage, ruled.expert) == ("rules", "math") and "learned router unsure" in ruled.reason
    assert (nothing.stage, nothing.expert) == ("backbone", None) and "no rule matched" in nothing.reason


def test_the_mapping_matrix_picks_the_expert_for_the_learned_domain(fitted, encoder):
    gated = GatedRouter(fitted.router, encoder, {"calc": {"math": 0.5}, "algebra": {"math": 2.0}, "law": {"law": 1.0}})
    assert gated.route("What is 9 plus 16?").expert == "algebra"
    assert gated.route("What is 9 plus 16?", available=["calc", "law"]).expert == "calc"
    alone = gated.route("What is 9 plus 16?", available=["law"])
    assert alone.expert is None and "has no loaded expert" in alone.reason


@pytest.fixture
def artifact(tmp_path, local_backbone_dir):
    return save_tiny_artifact(tmp_path, local_backbone_dir, router=load_yaml(RouterSpec, ROUTER_YAML))


def test_a_manifest_carries_the_router_by_sha256_and_a_pop_makes_it_stale(artifact, fitted):
    manifest = read_manifest(artifact)
    store = BlobStore(str(artifact))
    entry = stage_router(store, fitted.router, {n: e.domain for n, e in manifest.experts.items()}, {"validation_accuracy": 1.0})
    updated = merge(manifest, learned_router=entry)
    write_manifest(store, updated)
    assert (artifact / entry.blob).is_file() and updated.router_is_current()
    assert entry.sha256 in {e.sha256 for e in updated.blob_entries().values()}
    assert isinstance(router_from_manifest(updated, store), GatedRouter)
    assert expert_mapping(updated) == updated.router.mapping  # the rules' matrix when the manifest has one
    assert expert_mapping(updated.model_copy(update={"router": None})) == {"math": {"math": 1.0}, "law": {"law": 1.0}}

    stale = pop(updated, "law")
    assert not stale.router_is_current()
    with pytest.warns(UserWarning, match="routing by the rules"):
        assert isinstance(router_from_manifest(stale, store), RuleRouter)

    composed_aware = _fixed([0.4, 0.3, 0.2, 0.1], ("math", "law", PLANNER_DOMAIN, OUT_OF_DOMAIN))
    aware = merge(manifest, learned_router=stage_router(store, composed_aware, {n: e.domain for n, e in manifest.experts.items()}))
    assert aware.learned_router.domains == ["math", "law", PLANNER_DOMAIN] and aware.router_is_current()  # 'planning' is no expert's domain
    assert not pop(aware, "law").router_is_current()

    data = bytearray((artifact / entry.blob).read_bytes())
    data[-1] ^= 1
    (artifact / entry.blob).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        router_from_manifest(updated, store, use_cache=False)
    with pytest.raises(ValueError, match="does not know the domains"):
        stage_router(store, fitted.router, {"sql": "sql"})


def test_router_train_and_route_file_on_an_artifact_folder(artifact, tmp_path, capsys):
    config = tmp_path / "router.yaml"
    LearnedRouterSpec(per_domain=12, per_general_set=2, per_user_set=0, per_domain_topic=0, per_general_topic=0, generated=0, concepts=0).to_yaml(config)
    math_file, law_file = tmp_path / "math.jsonl", tmp_path / "law.jsonl"
    math_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in MATH))
    law_file.write_text("".join(json.dumps(p) + "\n" for p in LAW))
    assert main(["router", "train", "--artifact", str(artifact), "--config", str(config),
                 "--prompts", f"math={math_file}", "--prompts", f"law={law_file}"]) == 0
    assert "learned router" in capsys.readouterr().out
    manifest = read_manifest(artifact)
    assert manifest.router_is_current() and manifest.learned_router.domains == ["math", "law"]

    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query": "What is 9 plus 16?"}) + "\n\n" + json.dumps("Is the landlord liable for the fall?") + "\n")
    assert main(["route", "--artifact", str(artifact), "--file", str(queries)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["prompt"], d["domain"], d["stage"]) for d in lines] == [
        ("What is 9 plus 16?", "math", "learned"), ("Is the landlord liable for the fall?", "law", "learned")]
    assert all(len(d["top"]) == 3 for d in lines)

    queries.write_text('{"query": 5}\n')
    assert main(["route", "--artifact", str(artifact), "--file", str(queries)]) == 2
    assert "line 1: expected a non-empty string" in capsys.readouterr().err
    assert main(["router", "train", "--artifact", str(artifact), "--prompts", "nonsense"]) == 2


def test_read_queries_names_the_line_that_is_not_json(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('"fine"\n{not json\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        read_queries(path)


def test_offline_set_lines_that_are_not_json_objects_are_skipped(tmp_path, monkeypatch):
    from ccoe.domains import general

    rows = tmp_path / "user-Fiqa.jsonl"
    rows.write_text('not json\n["a list"]\n{"question": 7}\n{"question": " How do I open a Roth IRA? "}\n\n{"question": "Is gold a good hedge?"}\n')
    monkeypatch.setattr(general, "USER_SETS", {None: {"Fiqa/test.jsonl": "question"}})
    monkeypatch.setattr(general, "fetch", lambda files: {"user-Fiqa.jsonl": rows})
    assert general.user_questions(None, 5) == ["How do I open a Roth IRA?", "Is gold a good hedge?"]
    assert general.user_questions(None, 1) == ["How do I open a Roth IRA?"] and general.user_questions("law", 5) == []
