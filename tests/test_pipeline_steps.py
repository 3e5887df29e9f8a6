"""Pipeline steps as plain functions: which expert of a manifest serves a domain in the evaluation, the planner job."""

import json
from pathlib import Path

import pytest

from ccoe.artifact import fetch_blob
from ccoe.config import BackboneSpec, LearnedRouterSpec, PipelineSpec, PlannerSpec, RouterSpec, TrainingSpec, load_yaml
from ccoe.manifest import PLANNER_DOMAIN, BackboneEntry, ExpertEntry, Manifest, TrainedExpert, read_router_metadata
from ccoe.pipeline import _expert_for, held_out_items, plan_jobs, train_pipeline_router
from ccoe.router import expert_for
from ccoe.storage import BlobStore

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _manifest(mapping: dict | None) -> Manifest:
    entry = lambda domain, digit: ExpertEntry(domain=domain, layers=[1], sha256=digit * 64, bytes=1, backbone_fingerprint="f")
    router = None if mapping is None else RouterSpec(domains={"law": {"keywords": ["court"]}, "math": {"keywords": ["sum"]}}, mapping=mapping)
    return Manifest(backbone=BackboneEntry(spec=BackboneSpec(source="x"), fingerprint="f"),
                    experts={"law_a": entry("law", "a"), "law_b": entry("law", "b"), "math": entry("math", "c")}, router=router)


def test_the_expert_of_a_domain_is_the_one_its_router_serves():
    manifest = _manifest({"law_a": {"law": 0.5}, "law_b": {"law": 1.0}, "math": {"math": 1.0}})
    assert (_expert_for(manifest, "law"), _expert_for(manifest, "math"), _expert_for(manifest, "sql")) == ("law_b", "math", None)


def test_two_experts_of_a_domain_without_a_mapping_are_an_error_not_a_guess():
    assert _expert_for(_manifest(None), "math") == "math"
    with pytest.raises(ValueError, match="domain 'law' has experts \\['law_a', 'law_b'\\] and no router mapping"):
        _expert_for(_manifest(None), "law")


def test_ties_in_the_mapping_go_where_routing_sends_them():
    manifest = _manifest({"law_b": {"law": 1.0}, "law_a": {"law": 1.0}, "math": {"math": 1.0}})
    assert _expert_for(manifest, "law") == expert_for("law", manifest.router.mapping, manifest.experts)[0] == "law_b"


def _pipeline_with_planner(**planner) -> PipelineSpec:
    spec = load_yaml(PipelineSpec, CONFIGS / "tiny.yaml")
    return spec.model_copy(update={"planner": PlannerSpec(composed=12, per_domain=4, **planner)})


def test_the_planner_is_one_more_job_of_the_pipeline_with_plans_for_its_experts():
    spec = _pipeline_with_planner(training=TrainingSpec(max_steps=7, batch_size=2, learning_rate=1e-3))
    jobs = {p.plan.expert.name: p for p in plan_jobs(spec, None)}
    assert sorted(jobs) == ["law", "math", "planner", "sql"]
    job = jobs["planner"].job
    assert (job.expert.domain, job.training.max_steps, job.training.learning_rate) == (PLANNER_DOMAIN, 7, 1e-3)
    assert job.data.records is None and Path(job.data.source).parent.name == "planner"  # a file: flow parameters are capped
    records = [json.loads(line) for line in Path(job.data.source).read_text().splitlines()]
    plans = [json.loads(r["response"])["steps"] for r in records]
    assert sum(len(p) == 2 for p in plans) == 12  # sql and math both have experts: composed plans
    assert sorted(p[0]["domain"] for p in plans if len(p) == 1) == ["law"] * 4 + ["math"] * 4 + ["sql"] * 4
    items, encoding = held_out_items(spec, PLANNER_DOMAIN)  # the gate judges it on its own held-out plans
    assert items and encoding == job.data and all(item["prompt"] in {r["prompt"] for r in records} for item in items)
    again = {p.plan.expert.name: p for p in plan_jobs(spec, None)}["planner"]
    assert again.data_fingerprint == jobs["planner"].data_fingerprint  # deterministic: an unchanged planner is skipped


def test_a_planner_named_like_an_expert_is_refused():
    with pytest.raises(ValueError, match=r"repeated: \['math'\]"):
        PipelineSpec.model_validate({**load_yaml(PipelineSpec, CONFIGS / "tiny.yaml").model_dump(), "planner": {"name": "math"}})


def _trained(name: str, domain: str) -> TrainedExpert:
    entry = ExpertEntry(domain=domain, layers=[1], sha256="d" * 64, bytes=1, backbone_fingerprint="f")
    return TrainedExpert(name=name, entry=entry, blob_path="unused", seconds=0.0)


def test_the_pipeline_trains_the_learned_router_for_its_experts_when_a_domain_expert_was_trained(tmp_path):
    spec = load_yaml(PipelineSpec, CONFIGS / "tiny.yaml").with_outputs_in(tmp_path)
    assert train_pipeline_router(spec, [_trained("math", "math")], None) is None  # no learned_router: rules only
    spec = spec.model_copy(update={"learned_router": LearnedRouterSpec(per_domain=12, per_general_set=1, views=False, steps=30, per_user_set=0, per_domain_topic=0, per_general_topic=0, generated=0, concepts=0)})
    entry = train_pipeline_router(spec, [_trained("math", "math")], None)
    assert entry.experts == ["law", "math", "sql"] and set(entry.domains) == {"law", "math", "sql"}
    assert read_router_metadata(fetch_blob(BlobStore(spec.storage), entry, use_cache=False))["ccoe_format"] == "ccoe-router/1"
    champion = _manifest(None).model_copy(update={"learned_router": entry})
    assert train_pipeline_router(spec, [_trained("planner", PLANNER_DOMAIN)], champion) is None  # still fits: kept
    assert train_pipeline_router(spec, [_trained("math", "math")], champion) is not None  # math's prompts may have changed


def test_with_a_planner_the_router_learns_composed_queries_and_a_router_without_them_is_retrained(tmp_path):
    from ccoe.config import PlannerSpec

    router = LearnedRouterSpec(per_domain=12, per_general_set=1, views=False, steps=30, per_user_set=0, per_domain_topic=0,
                               per_general_topic=0, generated=0, concepts=0, composed=6)
    plain = load_yaml(PipelineSpec, CONFIGS / "tiny.yaml").with_outputs_in(tmp_path).model_copy(update={"learned_router": router})
    planned = plain.model_copy(update={"planner": PlannerSpec()})
    entry = train_pipeline_router(planned, [_trained("planner", PLANNER_DOMAIN)], None)
    assert entry.domains[-1] == PLANNER_DOMAIN and sorted(entry.domains[:-1]) == ["law", "math", "sql"] and entry.experts == ["law", "math", "sql"]  # the planner is no routing target
    without = train_pipeline_router(plain, [_trained("math", "math")], None)
    assert PLANNER_DOMAIN not in without.domains
    stale = _manifest(None).model_copy(update={"learned_router": without})
    assert train_pipeline_router(planned, [_trained("planner", PLANNER_DOMAIN)], stale) is not None  # a planner came: retrain
    current = _manifest(None).model_copy(update={"learned_router": entry})
    assert train_pipeline_router(planned, [_trained("planner", PLANNER_DOMAIN)], current) is None
    assert train_pipeline_router(planned.model_copy(update={"learned_router": router.model_copy(update={"composed": 0})}),
                                 [_trained("planner", PLANNER_DOMAIN)], current) is not None  # composed switched off: retrain
