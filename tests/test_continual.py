"""Continual updates (ccoe.continual): shards by content, what an update trains on, held-out sides,
warm starts that load exactly the parent's weights, and lineage in the manifest."""

import hashlib
import json

import pytest
import torch

from ccoe.config import DataSpec, ExpertInit, ExpertJobSpec, ExpertSpec, LayerSelection, ShardSpec, StorageSpec
from ccoe.continual import held_out_rows, list_shards, plan_shards, selection_file
from ccoe.data import load_records, to_examples, validation_bucket
from ccoe.expert import continued_expert, create_expert, expert_to_bytes
from ccoe.manifest import ExpertEntry
from ccoe.storage import BlobStore, blob_name
from lightning_modules.train import initial_expert
from tests.conftest import perturb, tiny_spec

TEMPLATE = DataSpec(records=[], val_fraction=0.2)


def rows(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"[{tag}] question {i}?", "response": f"answer {tag}-{i}", "answer": str(i)} for i in range(n)]


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def write(store: BlobStore, name: str, data: bytes) -> None:
    if store.is_local:
        store.fs.makedirs(store.path(name).rsplit("/", 1)[0], exist_ok=True)
    store.fs.pipe(store.path(name), data)


def shard_spec(store: BlobStore, **changes) -> ShardSpec:
    return ShardSpec(location=store.spec, **changes)


def test_shards_are_files_in_name_order_known_by_content(store):
    write(store, "2026-01-02.jsonl", jsonl(rows("b", 5)))
    write(store, "2026-01-01.jsonl", jsonl(rows("a", 5)))
    write(store, "copy-of-first.jsonl", jsonl(rows("a", 5)))  # same bytes as 2026-01-01: one shard
    write(store, "README.md", b"not data")
    write(store, ".2026-01-03.jsonl.tmp", b"half written")
    write(store, "sub/2026-01-04.jsonl", jsonl(rows("c", 5)))  # not directly in the location
    shards = list_shards(shard_spec(store))
    assert [s.name for s in shards] == ["2026-01-01.jsonl", "2026-01-02.jsonl"]
    for shard, tag in zip(shards, "ab"):
        assert shard.sha256 == hashlib.sha256(jsonl(rows(tag, 5))).hexdigest()
        assert shard.path.name == f"{shard.sha256}.jsonl" and shard.path.read_bytes() == jsonl(rows(tag, 5))


def test_a_missing_or_empty_location_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        list_shards(ShardSpec(location=StorageSpec(uri=str(tmp_path / "nowhere"))))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no shards"):
        list_shards(ShardSpec(location=StorageSpec(uri=str(tmp_path / "empty"))))


def _sides(records):
    return [validation_bucket(ex) < TEMPLATE.val_fraction for ex in to_examples(records, TEMPLATE)]


def test_a_fresh_start_trains_on_every_shard_and_a_continued_one_on_new_shards_plus_replay(tmp_path):
    location = BlobStore(str(tmp_path / "shards"))
    write(location, "1.jsonl", jsonl(rows("a", 60)))
    write(location, "2.jsonl", jsonl(rows("b", 40)))
    spec = shard_spec(location, replay_fraction=0.5, seed=3)
    first = list_shards(spec)[0].sha256

    fresh = plan_shards(spec, TEMPLATE, [first], continue_champion=False)
    assert [s.name for s in fresh.new] == ["2.jsonl"] and [s.name for s in fresh.seen] == ["1.jsonl"]
    assert list(fresh.records) == rows("a", 60) + rows("b", 40) and fresh.replayed == 0
    assert fresh.lineage == tuple(s.sha256 for s in fresh.shards)

    continued = plan_shards(spec, TEMPLATE, [first], continue_champion=True)
    new_train = sum(not held for held in _sides(rows("b", 40)))
    assert continued.replayed == round(0.5 * new_train) > 0
    assert list(continued.records[:40]) == rows("b", 40)  # the new shard whole (the trainer splits it)
    replayed = list(continued.records[40:])
    assert len(replayed) == continued.replayed and all(r in rows("a", 60) for r in replayed)
    assert not any(_sides(replayed))  # never a held-out item of an earlier shard
    assert plan_shards(spec, TEMPLATE, [first], continue_champion=True).records == continued.records  # seeded
    assert plan_shards(shard_spec(location, replay_fraction=0.5, seed=4), TEMPLATE, [first], True).records != continued.records
    assert continued.lineage == (first, list_shards(spec)[1].sha256)
    assert "1 new of 2 shards (2.jsonl)" in continued.summary() and f"+ {continued.replayed} replayed" in continued.summary()

    nothing_new = plan_shards(spec, TEMPLATE, [s.sha256 for s in list_shards(spec)], continue_champion=True)
    assert nothing_new.new == () and nothing_new.records == ()


def test_held_out_rows_are_the_validation_side_spread_over_shards(tmp_path):
    location = BlobStore(str(tmp_path / "shards"))
    write(location, "1.jsonl", jsonl(rows("a", 50)))
    write(location, "2.jsonl", jsonl(rows("b", 50)))
    shas = [s.sha256 for s in list_shards(shard_spec(location))]
    everything = held_out_rows(shas, TEMPLATE)
    expected = [r for tag in "ab" for r, held in zip(rows(tag, 50), _sides(rows(tag, 50))) if held]
    assert everything == expected and 0 < len(everything) < 40
    cut = held_out_rows(shas, TEMPLATE, limit=4)
    assert len(cut) == 4 and {r["prompt"][1] for r in cut} == {"a", "b"}
    with pytest.raises(FileNotFoundError, match="not in the local shard cache"):
        held_out_rows(["0" * 64], TEMPLATE)


def test_the_selection_file_is_content_addressed():
    first, again = selection_file(rows("a", 3)), selection_file(rows("a", 3))
    assert first == again and load_records(DataSpec(source=str(first))) == rows("a", 3)
    assert selection_file(rows("a", 4)) != first


def test_a_warm_start_loads_exactly_the_champions_expert(llama_backbone, tmp_path):
    parent = perturb(create_expert(llama_backbone, "math", "math", LayerSelection(strategy="top", k=2)))
    data = expert_to_bytes(parent)
    sha = hashlib.sha256(data).hexdigest()
    store = BlobStore(str(tmp_path / "blobs"))
    store.put_blob(data)
    spec = ExpertSpec(name="math", domain="math", layers=LayerSelection(strategy="top", k=2))
    job = ExpertJobSpec(backbone=tiny_spec(), expert=spec, data=DataSpec(records=[{"prompt": "p", "response": "r"}]),
                        init=ExpertInit(sha256=sha, storage=store.spec))
    warm = initial_expert(job, llama_backbone)
    assert expert_to_bytes(warm) == data  # every tensor as the parent left it
    assert all(torch.equal(warm.tensors()[k], v) for k, v in parent.tensors().items())
    cold = initial_expert(job.model_copy(update={"init": None}), llama_backbone)
    assert not torch.equal(cold.tensors()["model.layers.3.mlp.down_proj.weight"], parent.tensors()["model.layers.3.mlp.down_proj.weight"])

    with pytest.raises(ValueError, match=r"holds domain 'math' on layers \[2, 3\], the config asks for 'math' on \[1, 3\]"):
        continued_expert(data, sha, llama_backbone, spec.model_copy(update={"layers": LayerSelection(strategy="explicit", indices=(1, 3))}))
    with pytest.raises(ValueError, match="holds domain 'math'.*asks for 'law'"):
        continued_expert(data, sha, llama_backbone, spec.model_copy(update={"domain": "law"}))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        continued_expert(data, "0" * 64, llama_backbone, spec)
    assert store.exists(blob_name(sha))


def test_lineage_round_trips_through_the_manifest_entry():
    shards = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3)]
    entry = ExpertEntry(domain="math", layers=[2, 3], sha256="a" * 64, bytes=10, backbone_fingerprint="f",
                        parent_sha256="b" * 64, shards=shards)
    again = ExpertEntry.model_validate_json(entry.model_dump_json())
    assert again == entry and again.shards == shards and again.parent_sha256 == "b" * 64
    assert ExpertEntry.model_validate({k: v for k, v in entry.model_dump().items() if k not in ("shards", "parent_sha256")}).shards == []
    for bad in (["../x"], [shards[0], shards[0]]):
        with pytest.raises(ValueError, match="distinct sha256"):
            ExpertEntry.model_validate({**entry.model_dump(), "shards": bad})
    with pytest.raises(ValueError):
        ExpertEntry.model_validate({**entry.model_dump(), "parent_sha256": "../../etc"})
