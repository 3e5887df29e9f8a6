"""Manifests, pop-and-push merges, blob stores (local folder and real S3), the MLflow registry,
the pyfunc (in process and behind a real `mlflow models serve`), and export."""

import json
import os
import sys
import urllib.request

import mlflow
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

import ccoe.registry as registry
from ccoe.artifact import ExpertBlob, stage_blobs
from ccoe.backbone import load_backbone
from ccoe.config import BackboneSpec, RegistrySpec, RouterSpec, StorageSpec, TrackingSpec, load_yaml
from ccoe.expert import create_expert, expert_to_bytes
from ccoe.export import export_expert
from ccoe.manifest import PLANNER_DOMAIN, Manifest, bare_manifest, merge, pop, push, verify_present
from ccoe.model import CCoEModel
from ccoe.storage import BlobStore
from tests.conftest import perturb, tiny_spec
from tests.processes import free_port, start, stop, wait_http
from tests.test_router import ROUTER_YAML


@pytest.fixture
def backbone(local_backbone_dir):
    return load_backbone(BackboneSpec(source=str(local_backbone_dir)))


@pytest.fixture
def reg(tmp_path):
    return RegistrySpec(tracking=TrackingSpec(root=str(tmp_path / "mlruns")), model_name="ccoe_test")


def make_blob(backbone, name, domain, layers, seed=1, **lineage):
    return ExpertBlob(expert_to_bytes(perturb(create_expert(backbone, name, domain, layers), seed=seed)), **lineage)


def _blob_files(store):
    return [p for p in store.fs.find(store.root) if "/blobs/" in p] if store.fs.exists(store.root) else []


def test_manifest_round_trip_and_pure_merge(backbone, store):
    bare = bare_manifest(backbone, storage=store.spec)
    entries = stage_blobs(store, [make_blob(backbone, "math", "math", [3]), make_blob(backbone, "law", "law", [0, 2], seed=2)])
    merged = merge(bare, entries, parent=4)
    assert Manifest.model_validate_json(merged.to_json()) == merged
    assert push(merged, "math", entries["math"]) == merged  # idempotent
    assert push(pop(merged, "law"), "law", entries["law"]) == merged  # pop then push restores
    assert merge(merged, {}, ["law"]).experts.keys() == {"math"}
    with pytest.raises(KeyError, match="cannot pop expert 'sql'"):
        pop(merged, "sql")
    verify_present(merged, store)


def test_merge_uploads_only_the_new_expert(backbone, store):
    first = [make_blob(backbone, "math", "math", [3]), make_blob(backbone, "law", "law", [1], seed=2)]
    stage_blobs(store, first)
    written = store.bytes_written
    again = stage_blobs(store, first)  # same blobs: nothing to upload
    assert store.bytes_written == written and len(again) == 2
    new = make_blob(backbone, "sql", "sql", [2], seed=3)
    stage_blobs(store, [new, *first])
    assert store.bytes_written - written == len(new.data)


def test_foreign_backbone_and_bad_names_write_nothing(backbone, store):
    other = load_backbone(tiny_spec("llama", seed=5))
    with pytest.raises(ValueError, match="nothing was written"):
        stage_blobs(store, [make_blob(backbone, "math", "math", [0]), make_blob(other, "law", "law", [0])], backbone.fingerprint)
    assert _blob_files(store) == []
    manifest = bare_manifest(backbone)
    for bad in ("../etc", "a/b", "has space"):
        with pytest.raises(ValueError, match="plain identifier"):
            merge(manifest, {}, [bad])


def test_tampered_blob_is_refused_on_load(backbone, store, reg, monkeypatch):
    monkeypatch.setenv("CCOE_CACHE", str(reg.tracking.root) + "-cache")
    result = registry.merge_and_register(reg, store, bare=bare_manifest(backbone), blobs=[make_blob(backbone, "math", "math", [3])])
    entry = result.manifest.experts["math"]
    data = bytearray(store.get(entry.blob))
    data[-1] ^= 1
    store.put_file(entry.blob, bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        registry.load(f"models:/{reg.model_name}@candidate", reg, use_cache=False)


def test_registry_versions_aliases_and_load(backbone, store, reg):
    router = load_yaml(RouterSpec, ROUTER_YAML)
    bare = bare_manifest(backbone)
    math, law = make_blob(backbone, "math", "math", [3], run_id="run-m"), make_blob(backbone, "law", "law", [0, 2], seed=2)
    first = registry.merge_and_register(reg, store, bare=bare, blobs=[math], router=router)
    assert first.version == 1 and first.bytes_uploaded == len(math.data)
    assert registry.get_alias_version(reg, "candidate") == 1 and registry.get_alias_version(reg, "champion") is None
    registry.set_alias(reg, "champion", 1)
    second = registry.merge_and_register(reg, store, bare=bare, blobs=[law])
    assert second.version == 2 and second.manifest.parent == 1 and second.bytes_uploaded == len(law.data)
    assert set(second.manifest.experts) == {"math", "law"} and second.manifest.router == router
    assert second.manifest.experts["math"] == first.manifest.experts["math"]  # untouched entry, same blob
    assert (registry.get_alias_version(reg, "candidate"), registry.get_alias_version(reg, "champion")) == (2, 1)
    tags = registry.client(reg).get_model_version(reg.model_name, "2").tags
    assert tags["ccoe.parent"] == "1" and tags["ccoe.pushed"] == "law" and json.loads(tags["ccoe.expert.math"])["run_id"] == "run-m"

    model, loaded_router, manifest = registry.load(f"models:/{reg.model_name}@candidate", reg)
    assert manifest == second.manifest and loaded_router is not None
    reference = CCoEModel(backbone)
    for blob in (math, law):
        from ccoe.expert import expert_from_bytes

        reference.push_expert(expert_from_bytes(blob.data, backbone))
    ids = torch.randint(0, 97, (2, 6))
    for name in ("math", "law", None):
        assert torch.equal(model(ids, expert=name).logits, reference(ids, expert=name).logits)

    registry.set_alias(reg, "champion", 2)
    third = registry.merge_and_register(reg, store, bare=bare, pops=["math"])
    assert set(third.manifest.experts) == {"law"} and third.bytes_uploaded == 0 and third.manifest.parent == 2
    with pytest.raises(KeyError, match="nothing was written"):
        registry.merge_and_register(reg, store, bare=bare, pops=["nope"])


def test_cli_reads_a_registry_version_in_a_fresh_process(backbone, reg, tmp_path):
    """No process-wide MLflow state: the CLI must find the model through --tracking-uri alone."""
    import subprocess

    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    registry.merge_and_register(reg, store, bare=bare_manifest(backbone), blobs=[make_blob(backbone, "math", "math", [3])])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-m", "ccoe.cli", "info", "--json", "--artifact", f"models:/{reg.model_name}@candidate",
         "--tracking-uri", registry.tracking_uri(reg)], cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["experts"]["math"]["layers"] == [3]


def test_racing_merges_lose_no_expert(backbone, reg, tmp_path, monkeypatch):
    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    bare = bare_manifest(backbone)
    real_register, raced = registry._register, []

    def register_after_a_competitor(spec, manifest, tags):
        if not raced:  # B has read its base; A merges and registers before B does
            raced.append(True)
            registry.merge_and_register(spec, store, bare=bare, blobs=[make_blob(backbone, "law", "law", [1], seed=2)])
        return real_register(spec, manifest, tags)

    monkeypatch.setattr(registry, "_register", register_after_a_competitor)
    result = registry.merge_and_register(reg, store, bare=bare, blobs=[make_blob(backbone, "math", "math", [3])])
    assert result.attempts == 2 and result.version == 3 and result.manifest.parent == 1
    assert set(result.manifest.experts) == {"math", "law"}
    assert registry.valid_versions(reg) == [1, 3]
    assert registry.client(reg).get_model_version(reg.model_name, "2").tags["ccoe.status"] == "superseded"
    assert registry.get_alias_version(reg, "candidate") == 3


def test_experiment_created_by_a_sibling_between_lookup_and_create_is_reused(reg, monkeypatch):
    """Parallel training jobs on a fresh server all find no experiment and all try to create it."""
    mlc = registry.client(reg)
    real_get, raced = mlc.get_experiment_by_name, []

    def lookup_then_a_sibling_creates(name):
        if not raced:  # the sibling job creates it right after our lookup missed
            raced.append(real_get(name))
            mlflow.MlflowClient(tracking_uri=registry.tracking_uri(reg)).create_experiment(name)
            return None
        return real_get(name)

    monkeypatch.setattr(mlc, "get_experiment_by_name", lookup_then_a_sibling_creates)
    got = registry.experiment_id(mlc, "fresh-experiment", None)
    assert raced == [None] and got == real_get("fresh-experiment").experiment_id


def test_merges_from_the_champion_build_on_pending_but_not_rejected_candidates(backbone, reg, tmp_path):
    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    bare = bare_manifest(backbone)
    registry.merge_and_register(reg, store, bare=bare, blobs=[make_blob(backbone, "math", "math", [3])])
    registry.set_alias(reg, "champion", 1)
    registry.merge_and_register(reg, store, bare=bare, blobs=[make_blob(backbone, "law", "law", [1], seed=2)])  # v2, pending
    pending = registry.merge_and_register(reg, store, bare=bare, blobs=[make_blob(backbone, "sql", "sql", [2], seed=3)])
    assert pending.attempts == 2 and set(pending.manifest.experts) == {"math", "law", "sql"}  # v3 superseded, v4 on v2
    registry.tag_version(reg, pending.version, {registry.STATUS_TAG: "rejected"})
    registry.tag_version(reg, 2, {registry.STATUS_TAG: "rejected"})
    fresh = registry.merge_and_register(reg, store, bare=bare, blobs=[make_blob(backbone, "code", "code", [0], seed=4)])
    assert fresh.attempts == 1 and fresh.manifest.parent == 1 and set(fresh.manifest.experts) == {"math", "code"}


def test_pyfunc_answers_with_expert_and_reason(backbone, reg, tmp_path):
    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    registry.merge_and_register(reg, store, bare=bare_manifest(backbone), blobs=[make_blob(backbone, "math", "math", [3])],
                                router=load_yaml(RouterSpec, ROUTER_YAML))
    mlflow.set_tracking_uri(registry.tracking_uri(reg))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{reg.model_name}@candidate")
    out = pyfunc.predict(pd.DataFrame({"prompt": ["what is the sum of two and three", "the court", "law"],
                                       "expert": [None, "math", "backbone"], "max_new_tokens": [3, 3, 3]}))
    assert list(out["expert"]) == ["math", "math", "backbone"]
    assert "domain 'math'" in out["reason"][0] and out["reason"][1] == "requested: math"
    assert all(isinstance(t, str) for t in out["text"])


def test_pyfunc_mode_column_plans_routes_and_forces(backbone, reg, tmp_path):
    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    blobs = [make_blob(backbone, "math", "math", [3]), make_blob(backbone, "planner", PLANNER_DOMAIN, [2, 3], seed=5)]
    registry.merge_and_register(reg, store, bare=bare_manifest(backbone), blobs=blobs, router=load_yaml(RouterSpec, ROUTER_YAML))
    mlflow.set_tracking_uri(registry.tracking_uri(reg))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{reg.model_name}@candidate")
    out = pyfunc.predict(pd.DataFrame({"prompt": ["what is the sum of two and three", "the court", "the sum of four and five", "law"],
                                       "mode": ["plan", "math", None, "backbone"], "max_new_tokens": [3, 3, 3, 3]}))
    assert list(out.columns) == ["text", "expert", "reason", "trace"]
    assert list(out["expert"]) == ["math", "math", "math", "backbone"]
    plan = json.loads(out["trace"][0])
    assert plan["plan"]["source"] == "fallback" and out["reason"][0] == plan["plan"]["fallback"]  # a random planner writes no plan
    assert plan["plan"]["steps"] == [{"domain": "math", "expert": "math"}] and plan["trace"][0]["expert"] == "math"
    assert json.loads(out["trace"][1]) == {"mode": "math", "expert": "math", "reason": "requested: math"}
    assert json.loads(out["trace"][2])["mode"] == "route" and "domain 'math'" in out["reason"][2]
    with pytest.raises(Exception, match="unknown mode or expert 'poem'"):
        pyfunc.predict(pd.DataFrame({"prompt": ["x"], "mode": ["poem"]}))


def test_mlflow_models_serve_answers_requests(backbone, reg, tmp_path):
    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    registry.merge_and_register(reg, store, bare=bare_manifest(backbone), blobs=[make_blob(backbone, "math", "math", [3])],
                                router=load_yaml(RouterSpec, ROUTER_YAML))
    registry.set_alias(reg, "champion", 1)
    port = free_port()
    uri = registry.tracking_uri(reg)
    path = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"  # `mlflow models serve` execs uvicorn
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    server = start(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{reg.model_name}@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env, tmp_path / "serve.log",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
        body = json.dumps({"dataframe_records": [{"prompt": "what is the sum of two and three", "max_new_tokens": 3}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"})
        row = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"][0]
        assert row["expert"] == "math" and "domain 'math'" in row["reason"] and isinstance(row["text"], str)
    finally:
        stop(server)


def test_export_loads_in_transformers_with_equal_logits(backbone, tmp_path, capsys):
    model = CCoEModel(backbone)
    model.push_expert(perturb(create_expert(backbone, "law", "law", [0, 3])))
    out = export_expert(model, "law", tmp_path / "law-hf")
    hf = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 97, (2, 7))
    assert torch.equal(hf(ids).logits, model(ids, expert="law").logits)
    assert json.loads((out / "ccoe-export.json").read_text())["layers"] == [0, 3]
    with pytest.raises(FileExistsError, match="not empty"):
        export_expert(model, "law", out)
    with pytest.raises(KeyError, match="no expert named 'x'"):
        export_expert(model, "x", tmp_path / "other")


def test_versions_are_readable_in_the_registry_ui_and_have_a_signature(backbone, reg, tmp_path, caplog):
    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    bare = bare_manifest(backbone)
    import warnings

    with caplog.at_level("WARNING"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.merge_and_register(reg, store, bare=bare, blobs=[make_blob(backbone, "math", "math", [3], run_id="run-m")])
        second = registry.merge_and_register(reg, store, bare=bare, blobs=[make_blob(backbone, "law", "law", [1], seed=2)])
    said = caplog.text + "\n".join(str(w.message) for w in caught)
    assert "Failed to infer model signature" not in said and "input example was not provided" not in said
    mlc = registry.client(reg)
    assert mlc.get_registered_model(reg.model_name).description == registry.MODEL_DESCRIPTION
    description = mlc.get_model_version(reg.model_name, "2").description
    math = second.manifest.experts["math"]
    assert description.startswith("Merged from version 1;") and f"| math | math | [3] | `{math.sha256[:12]}…` | backbone | - | run-m |" in description
    registry.append_description(reg, 2, "## Gate decision")
    assert mlc.get_model_version(reg.model_name, "2").description == f"{description}\n\n## Gate decision"
    local = mlflow.artifacts.download_artifacts(artifact_uri=mlc.get_model_version_download_uri(reg.model_name, "2"),
                                                dst_path=str(tmp_path / "model"), tracking_uri=registry.tracking_uri(reg))
    logged = mlflow.models.Model.load(local)
    assert logged.load_input_example(local).equals(registry.INPUT_EXAMPLE)
    signature = logged.signature
    assert [c.name for c in signature.inputs.inputs] == ["prompt", "mode", "expert", "max_new_tokens"]
    assert [c.name for c in signature.outputs.inputs] == ["text", "expert", "reason", "trace"]
