"""The tiny pipeline end to end under Prefect's test harness with a temporary sqlite MLflow."""

import json
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from ccoe import registry
from ccoe.config import PipelineSpec, load_yaml
from ccoe.manifest import PLANNER_DOMAIN
from ccoe.pipeline import held_out_items
from flows.pipeline import TrainingOverrides, pipeline, retrain_expert
from tests.flows.conftest import TINY, tiny_config


@pytest.fixture
def config(tmp_path, prefect_harness):
    return tiny_config(tmp_path)


def test_pipeline_trains_merges_evaluates_and_promotes_then_skips_unchanged_data(config):
    spec = load_yaml(PipelineSpec, config)
    started = time.perf_counter()
    summary = pipeline(str(config))
    wall = time.perf_counter() - started
    assert sorted(summary["trained"]) == ["law", "math", "sql"] and summary["failures"] == {}
    assert summary["version"] == 1 and summary["promote"] is True
    assert registry.get_alias_version(spec.registry, "candidate") == 1 == registry.get_alias_version(spec.registry, "champion")
    version = registry.client(spec.registry).get_model_version(spec.registry.model_name, "1")
    assert version.tags["ccoe.gate"] == "promoted" and version.tags["ccoe.experts"] == "law,math,sql"
    assert version.tags["ccoe.evaluation_run"] == summary["evaluation_run_id"]
    assert "| math | math |" in version.description and "## Gate decision for version 1: PROMOTED to champion" in version.description
    timings = summary["timings"]
    assert set(timings["train_jobs_s"]) == {"law", "math", "sql"}
    assert 0 < max(timings["train_jobs_s"].values()) <= timings["train_wall_s"]  # each job ran inside the training phase
    assert 0 < timings["train_wall_s"] + timings["merge_s"] + timings["evaluate_s"] < wall  # phases in seconds, within the run

    client = mlflow.MlflowClient(tracking_uri=registry.tracking_uri(spec.registry))
    evaluation = client.get_run(summary["evaluation_run_id"])
    assert evaluation.data.tags["ccoe.gate"] == "promoted"
    assert set(evaluation.data.tags["ccoe.train_runs"].split(",")) == set(summary["train_run_ids"])
    assert {"math/base", "math/candidate", "sql/candidate", "law/candidate", "router_accuracy"} <= set(evaluation.data.metrics)
    assert {a.path for a in client.list_artifacts(summary["evaluation_run_id"])} == {"gate.png", "scores.json"}
    for run_id in summary["train_run_ids"]:
        assert client.get_run(run_id).info.status == "FINISHED"

    again = pipeline(str(config))
    assert again["trained"] == [] and again["version"] is None
    assert all("data unchanged since the champion" in reason for reason in again["skipped"].values())


def test_the_pipeline_trains_the_planner_and_the_learned_router_into_the_candidate(tmp_path, prefect_harness):
    gate = load_yaml(PipelineSpec, TINY).gate
    gate = gate.model_dump() | {"basis": gate.basis | {PLANNER_DOMAIN: "loss"}}  # after 3 steps it writes no plan yet
    config = tiny_config(tmp_path, planner={"composed": 6, "per_domain": 3, "max_length": 96, "layers": {"strategy": "top", "k": 1},
                                            "max_new_tokens": 24,
                                            "training": {"max_steps": 3, "batch_size": 2, "learning_rate": 1.0e-3, "log_every_n_steps": 1}},
                         learned_router={"per_domain": 12, "per_general_set": 1, "views": False, "steps": 30, "per_user_set": 0, "per_domain_topic": 0, "per_general_topic": 0, "generated": 0, "concepts": 0}, gate=gate)
    spec = load_yaml(PipelineSpec, config)
    summary = pipeline(str(config))
    assert sorted(summary["trained"]) == ["law", "math", "planner", "sql"] and summary["failures"] == {}
    manifest = registry.get_version(spec.registry, summary["version"]).manifest
    assert manifest.experts["planner"].domain == PLANNER_DOMAIN and sorted(manifest.routable_experts()) == ["law", "math", "sql"]
    assert manifest.router_is_current() and manifest.learned_router.experts == ["law", "math", "sql"]
    planning = next(e for e in summary["rows"] if e["domain"] == PLANNER_DOMAIN)
    assert planning["basis"] == "loss" and planning["candidate_route"] == "planner"  # judged on its held-out plans' NLL, as asked
    assert planning["base_metric"] == 0.0 and planning["candidate_metric"] is not None and planning["n"] == len(held_out_items(spec, PLANNER_DOMAIN)[0])  # the plain backbone writes no plan
    routing = next(e for e in summary["rows"] if e["domain"] == "routing")  # the learned gate against the rules alone
    assert routing["reference"] == "rules" and routing["n"] == 24 and routing["ok"] == (routing["diff_high"] >= 0)
    again = pipeline(str(config))
    assert again["trained"] == [] and "planner" in again["skipped"]


def test_a_bad_expert_is_rejected_and_the_champion_stays(config, tmp_path):
    spec = load_yaml(PipelineSpec, config)
    assert pipeline(str(config))["promote"] is True
    strict = tmp_path / "strict.yaml"
    data = yaml.safe_load(config.read_text())
    data["gate"] = {**data["gate"], "loss_margin": 0.0}  # a retrained domain must beat the champion with an interval above 0
    strict.write_text(yaml.safe_dump(data))
    summary = retrain_expert("math", config=str(strict), overrides=TrainingOverrides(learning_rate=50.0, max_steps=2))
    assert summary["version"] == 2 and summary["promote"] is False
    assert registry.get_alias_version(spec.registry, "champion") == 1
    tags = registry.client(spec.registry).get_model_version(spec.registry.model_name, "2").tags
    assert tags["ccoe.gate"] == "rejected" and tags["ccoe.status"] == "rejected" and "math" in tags["ccoe.gate.reasons"]
    assert registry.valid_versions(spec.registry) == [1]

    from ccoe.pipeline import evaluate_candidate  # a person sees the evaluation move; both experts named math are scored

    lines = []
    evaluation = evaluate_candidate(load_yaml(PipelineSpec, strict), 2, ["math"], report=lines.append)
    assert [line.split(" (")[0] for line in lines if line.startswith("evaluating")] == ["evaluating law", "evaluating math", "evaluating sql"]
    assert "evaluating math (2/3): 3 items, routes base, champion=math-champion, candidate=math" in lines
    assert evaluation.scores["math"].champion.route == "math-champion" and evaluation.scores["math"].candidate.route == "math"
    assert evaluation.scores["law"].champion.route == evaluation.scores["law"].candidate.route == "law"  # one blob, scored once
    math = next(e for e in evaluation.decision.evidence if e.domain == "math")
    assert (math.basis, math.outcome, math.ok) == ("loss", "regressed", False) and "NLL is not finite" in math.reason


def test_one_failing_expert_does_not_stop_the_others(tmp_path, prefect_harness):
    data = yaml.safe_load(tiny_config(tmp_path).read_text())
    data["experts"][1]["data"] = {"records": [{"prompt": "one", "response": "example"}]}  # sql's job dies: no full batch
    data["experts"][2]["data"] = {"records": [{"prompt": "only a prompt"}] * 4}  # law's data has no `response`
    config = tmp_path / "broken.yaml"
    config.write_text(yaml.safe_dump(data))
    summary = pipeline(str(config))
    assert summary["trained"] == ["math"] and summary["version"] == 1
    assert sorted(summary["failures"]) == ["law", "sql"]
    assert "cannot fill one batch" in summary["failures"]["sql"]
    assert "the row has ['prompt'] (missing or null: ['response'])" in summary["failures"]["law"]


def test_a_trained_blob_goes_straight_to_the_store_and_merges_without_the_trainers_disk(tmp_path):
    """With `deployment` set, each expert trains on its own node: the merge cannot see that disk. The
    job puts its blob into the pipeline's store and hands over a typed entry; its planned data
    fingerprint must still hold when it trains."""
    from ccoe.data import data_fingerprint, load_records, to_examples
    from ccoe.pipeline import data_for, merge_results
    from ccoe.storage import BlobStore
    from lightning_modules.train import train_expert

    spec = load_yaml(PipelineSpec, tiny_config(tmp_path))
    plan = spec.experts[1]
    data = data_for(spec, plan)
    with pytest.raises(ValueError, match="changed between planning and training"):
        train_expert(spec.job(plan, data, "0" * 64))
    trained = train_expert(spec.job(plan, data, data_fingerprint(to_examples(load_records(data), data))))
    assert trained.stored_in == spec.storage and BlobStore(spec.storage).has_blob(trained.entry.sha256, trained.entry.bytes)
    Path(trained.blob_path).unlink()  # as seen from the merge pod
    merged = merge_results(spec, [trained])
    assert merged.manifest.experts["sql"] == trained.entry and merged.bytes_uploaded == 0

    forged = trained.model_copy(update={"entry": trained.entry.model_copy(update={"sha256": "0" * 64})})
    with pytest.raises(FileNotFoundError, match="is missing"):
        merge_results(spec, [forged])
    with pytest.raises(ValueError, match="were not put into this pipeline's blob store"):
        merge_results(spec, [trained.model_copy(update={"stored_in": None})])


def test_a_custom_domain_is_judged_on_its_own_held_out_split(tmp_path, prefect_harness):
    records = [{"prompt": f"Clause {i}: who pays the deposit?", "response": f"The tenant pays deposit number {i}."} for i in range(40)]
    custom = {"expert": {"name": "contracts", "domain": "contracts", "layers": {"strategy": "top", "k": 1}},
              "data": {"records": records, "val_fraction": 0.25}, "training": {"max_steps": 6, "learning_rate": 3.0e-3}}
    data = yaml.safe_load(tiny_config(tmp_path).read_text())
    config = tiny_config(tmp_path, experts=[data["experts"][0], custom])
    summary = pipeline(str(config))
    contracts = next(r for r in summary["rows"] if r["domain"] == "contracts")
    assert (contracts["basis"], contracts["outcome"], contracts["ok"], contracts["candidate_metric"]) == ("loss", "improved", True, None)
    assert contracts["n"] == 10 and contracts["diff_low"] > 0 and summary["promote"] is True

    from ccoe.pipeline import held_out_items

    spec = load_yaml(PipelineSpec, config)
    unsplit = spec.model_copy(update={"experts": [spec.experts[0], spec.experts[1].model_copy(
        update={"data": spec.experts[1].data.model_copy(update={"val_fraction": 0.0})})]})
    assert held_out_items(unsplit, "contracts") == ([], None)  # so the gate refuses it (tests/test_gate.py)


def test_a_sweep_trains_every_trial_and_chooses_on_the_validation_split(tmp_path, prefect_harness):
    from ccoe.config import LayerSelection
    from ccoe.sweep import SweepSpec
    from flows.sweep import sweep_expert

    config = tiny_config(tmp_path)
    sweep = SweepSpec(learning_rates=[3e-3, 50.0], layers=[LayerSelection(strategy="top", k=1)], max_steps=[4])
    summary = sweep_expert("math", sweep, str(config))
    assert summary["best"] == "math-t0" and summary["training"] == {"learning_rate": 3e-3, "max_steps": 4}
    assert summary["layers"] == {"strategy": "top", "k": 1, "indices": None}
    assert [row["trial"] for row in summary["table"]] == ["math-t0"] and summary["table"][0]["n"] == 165  # the math train split's 5%
    assert summary["failures"] == {"math-t1": "diverged: non-finite validation NLL"}  # lr 50
    spec = load_yaml(PipelineSpec, config)
    run = registry.client(spec.registry).get_run(summary["run_id"])
    assert run.data.params["best"] == "math-t0" and "math-t0/val_loss" in run.data.metrics


def test_a_continual_update_continues_the_champion_on_new_shards_and_checks_forgetting(tmp_path, prefect_harness):
    from ccoe.pipeline import plan_jobs

    shards = tmp_path / "incoming"
    shards.mkdir()

    def arrive(name: str, start: int) -> None:
        rows = [{"prompt": f"Clause {i}: who pays the deposit?", "response": f"The tenant pays deposit number {i}."} for i in range(start, start + 40)]
        (shards / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    plan = {"expert": {"name": "contracts", "domain": "contracts", "layers": {"strategy": "top", "k": 1}},
            "shards": {"location": {"uri": str(shards)}, "replay_fraction": 0.5}, "init": "champion",
            "data": {"records": [], "val_fraction": 0.25}, "training": {"max_steps": 6, "learning_rate": 3.0e-3}}
    config = tiny_config(tmp_path, experts=[plan])
    spec = load_yaml(PipelineSpec, config)
    client = mlflow.MlflowClient(tracking_uri=registry.tracking_uri(spec.registry))

    arrive("2026-11-01.jsonl", 0)
    first = pipeline(str(config))
    assert first["trained"] == ["contracts"] and first["promote"] is True
    v1 = registry.get_version(spec.registry, 1).manifest.experts["contracts"]
    assert v1.parent_sha256 is None and len(v1.shards) == 1  # no champion yet: started from the backbone
    new = next(r for r in first["rows"] if r["domain"] == "contracts.new-shards")
    assert (new["basis"], new["reference"], new["outcome"], new["ok"]) == ("loss", "base", "improved", True)
    assert not any(r["domain"] == "contracts.earlier-shards" for r in first["rows"])

    again = pipeline(str(config))
    assert again["trained"] == [] and "no new shards since the champion's expert (1 seen" in again["skipped"]["contracts"]

    arrive("2026-11-08.jsonl", 40)
    second = pipeline(str(config))
    assert second["version"] == 2 and second["promote"] is True
    v2 = registry.get_version(spec.registry, 2).manifest.experts["contracts"]
    assert v2.parent_sha256 == v1.sha256 and v2.shards[0] == v1.shards[0] and len(v2.shards) == 2
    rows = {r["domain"]: r for r in second["rows"]}
    assert rows["contracts.new-shards"]["reference"] == "champion" and rows["contracts.new-shards"]["ok"] is True
    earlier = rows["contracts.earlier-shards"]  # the forgetting check: the old shard's held-out items
    assert (earlier["n"], rows["contracts.new-shards"]["n"]) == (10, 12) and earlier["ok"] is True  # sides fixed by content
    described = client.get_model_version(spec.registry.model_name, "2").description  # the registry UI shows the lineage
    assert f"| `{v2.sha256[:12]}…` | `{v1.sha256[:12]}…` | 2 |" in described
    tag = json.loads(client.get_model_version(spec.registry.model_name, "2").tags["ccoe.expert.contracts"])
    assert tag["parent_sha256"] == v1.sha256 and tag["shards"] == 2
    run = client.get_run(v2.run_id).data.tags
    assert run["ccoe.init"] == "continued" and run["ccoe.parent_sha256"] == v1.sha256 and run["ccoe.shard_count"] == "2"

    arrive("2026-11-15.jsonl", 80)
    refused = retrain_expert("contracts", config=str(config), overrides=TrainingOverrides(learning_rate=50.0, max_steps=2))
    assert refused["version"] == 3 and refused["promote"] is False
    assert registry.get_alias_version(spec.registry, "champion") == 2
    assert registry.get_version(spec.registry, "champion").manifest.experts["contracts"] == v2  # untouched
    still_new = plan_jobs(spec, registry.get_version(spec.registry, "champion").manifest)[0]
    assert still_new.job.init.sha256 == v2.sha256 and len(still_new.job.shards) == 3  # the refused shard is offered again
