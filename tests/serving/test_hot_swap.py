"""Following the registry alias: a moved `champion` is swapped in, only changed experts are loaded, and a
request that started on the old version finishes on the old expert."""

import queue
import threading
import time

import pytest

import ccoe.registry as registry
from ccoe.backbone import load_backbone
from ccoe.serving.batching import Finished, SamplingParams
from ccoe.config import BackboneSpec, RegistrySpec, RouterSpec, StorageSpec, TrackingSpec, load_yaml
from ccoe.expert import expert_from_bytes
from ccoe.serving.hot_swap import ExpertPool, ManifestSource, UnknownModel, resident_key
from ccoe.manifest import bare_manifest
from ccoe.model import CCoEModel
from ccoe.storage import BlobStore
from tests.serving.test_batching import alone
from tests.test_registry import make_blob
from tests.test_router import ROUTER_YAML


@pytest.fixture
def registered(tmp_path, local_backbone_dir):
    """Version 1 (math, law) as champion in a sqlite registry, and what version 2 needs."""
    backbone = load_backbone(BackboneSpec(source=str(local_backbone_dir)))
    reg = RegistrySpec(tracking=TrackingSpec(root=str(tmp_path / "mlruns")), model_name="ccoe_serve")
    store = BlobStore(StorageSpec(uri=str(tmp_path / "store")))
    blobs = {"math": make_blob(backbone, "math", "math", [3], seed=1), "law": make_blob(backbone, "law", "law", [1, 2], seed=2)}
    registry.merge_and_register(reg, store, bare=bare_manifest(backbone, storage=store.spec), blobs=list(blobs.values()),
                                router=load_yaml(RouterSpec, ROUTER_YAML))
    registry.set_alias(reg, "champion", 1)
    return backbone, reg, store, blobs


def collect(events: queue.Queue) -> tuple[str, Finished]:
    parts = []
    while not isinstance(event := events.get(timeout=30), Finished):
        parts.append(event.text)
    return "".join(parts), event


def greedy(backbone, blob, prompt_ids, steps) -> str:
    model = CCoEModel(backbone)
    model.push_expert(expert_from_bytes(blob.data, backbone))
    return backbone.tokenizer.decode(alone(model, backbone.tokenizer, prompt_ids, model.expert_names()[0], steps), skip_special_tokens=True)


def test_a_moved_champion_is_swapped_in_and_old_requests_finish_on_old_experts(registered):
    backbone, reg, store, blobs = registered
    uri = f"models:/{reg.model_name}@champion"
    pool = ExpertPool(ManifestSource(uri, registry.tracking_uri(reg)))
    assert pool.current.version == 1 and pool.loads == 2 and pool.current.model_names() == ["auto", "backbone", "law", "math"]
    old_law, math_key = pool.current.keys["law"], pool.current.keys["math"]
    assert old_law == resident_key(pool.current.manifest.experts["law"].sha256)

    ids = backbone.tokenizer("law court patient")["input_ids"]
    started_on_v1: queue.Queue = queue.Queue()
    pool.submit("law", "law court patient", ids, SamplingParams(max_new_tokens=8), started_on_v1.put)  # waits: engine not started

    new_law = make_blob(backbone, "law", "law", [1, 2], seed=9)
    registry.merge_and_register(reg, store, bare=bare_manifest(backbone, storage=store.spec), blobs=[new_law])
    registry.set_alias(reg, "champion", 2)
    refreshed = []
    swapper = threading.Thread(target=lambda: refreshed.append(pool.refresh()))
    swapper.start()
    while pool.engine._exclusive.empty():  # the swap is queued while the v1 request still waits: it runs first
        time.sleep(0.01)
    pool.engine.start()
    try:
        swapper.join(60)
        assert refreshed == [True]
        assert pool.current.version == 2 and pool.loads == 3 and pool.reused == 1  # math was kept, not reloaded
        assert pool.current.keys["math"] == math_key and pool.current.keys["law"] != old_law
        text, finished = collect(started_on_v1)
        assert finished.reason in ("stop", "length") and text == greedy(backbone, blobs["law"], ids, 8)

        after: queue.Queue = queue.Queue()
        resolved, _ = pool.submit("law", "law court patient", ids, SamplingParams(max_new_tokens=8), after.put)
        assert resolved.version.endswith("(version 2)")
        assert collect(after)[0] == greedy(backbone, new_law, ids, 8) != text
        assert pool.refresh() is False  # nothing moved: the old law, now unused, is popped
        assert sorted(pool.model.expert_names()) == sorted(pool.current.keys.values())
        with pytest.raises(UnknownModel, match="unknown model 'sql'"):
            pool.resolve("sql", "select 1")
    finally:
        pool.engine.close()


def test_a_refresh_that_fails_keeps_serving_the_current_version(registered):
    backbone, reg, store, blobs = registered
    pool = ExpertPool(ManifestSource(f"models:/{reg.model_name}@champion", registry.tracking_uri(reg)))
    new_law = make_blob(backbone, "law", "law", [1, 2], seed=13)  # a blob no test has cached
    version = registry.merge_and_register(reg, store, bare=bare_manifest(backbone, storage=store.spec), blobs=[new_law])
    registry.set_alias(reg, "champion", version.version)
    store.fs.rm(f"{store.root}/{version.manifest.experts['law'].blob}")  # a blob lost between publish and load
    pool.engine.start()
    try:
        with pytest.raises(FileNotFoundError):
            pool.refresh()
        lines, stop = [], threading.Event()
        follower = threading.Thread(target=pool.follow, args=(0.05, stop, lines.append))
        follower.start()
        while not lines:
            time.sleep(0.05)
        stop.set()
        follower.join(30)
        assert lines[0].startswith(f"could not refresh models:/{reg.model_name}@champion: FileNotFoundError")
        assert pool.last_error.startswith("FileNotFoundError") and pool.current.version == 1
        ids = backbone.tokenizer("law court patient")["input_ids"]
        events: queue.Queue = queue.Queue()
        pool.submit("law", "law court patient", ids, SamplingParams(max_new_tokens=8), events.put)
        assert collect(events)[0] == greedy(backbone, blobs["law"], ids, 8)
    finally:
        pool.engine.close()


@pytest.fixture
def four_experts(tmp_path, local_backbone_dir):
    """An artifact folder with four experts that differ from the backbone and from each other."""
    from ccoe.artifact import save_artifact
    from ccoe.cli import build_model
    from ccoe.config import CCoESpec
    from tests.conftest import perturb

    spec = CCoESpec.model_validate({"backbone": {"source": str(local_backbone_dir)}, "experts": [
        {"name": name, "domain": name, "layers": {"strategy": "top", "k": 1}} for name in ("math", "law", "code", "sql")]})
    model = build_model(spec)
    for n, expert in enumerate(model.experts.values()):
        perturb(expert, scale=0.3, seed=20 + n)
    root = tmp_path / "artifact"
    save_artifact(model, str(root))
    return root, model


def test_under_max_resident_cold_experts_load_on_use_and_the_least_recently_used_is_evicted(four_experts):
    root, reference = four_experts
    tokenizer = reference.backbone.tokenizer
    ids = tokenizer("what is the sum")["input_ids"]
    with pytest.raises(ValueError, match="do not fit max_resident=1"):
        ExpertPool(ManifestSource(str(root)), max_resident=1, pin=["law", "sql"])
    with pytest.raises(ValueError, match=r"pinned experts \['medical'\] are not in"):
        ExpertPool(ManifestSource(str(root)), max_resident=2, pin=["medical"])
    pool = ExpertPool(ManifestSource(str(root)), max_resident=2, pin=["law"])
    keys = pool.current.keys
    assert pool.loads == 1 and pool.model.expert_names() == [keys["law"]]
    pool.engine.start()

    def ask(name):
        events: queue.Queue = queue.Queue()
        pool.submit(name, "what is the sum", ids, SamplingParams(max_new_tokens=6), events.put)
        text = collect(events)[0]
        expected = tokenizer.decode(alone(reference, tokenizer, ids, name, 6), skip_special_tokens=True)
        assert text == expected, name
        return sorted(pool.model.expert_names())

    try:
        assert ask("math") == sorted([keys["law"], keys["math"]]) and pool.loads == 2
        assert ask("code") == sorted([keys["law"], keys["code"]]) and pool.evictions == 1  # math was least recently used
        assert ask("law") == sorted([keys["law"], keys["code"]]) and pool.loads == 3 and pool.hits == 1
        assert ask("math") == sorted([keys["law"], keys["math"]]) and pool.loads == 4  # law is pinned: code goes
        assert ask("math") == sorted([keys["law"], keys["math"]]) and pool.loads == 4 and pool.hits == 2
    finally:
        pool.engine.close()
