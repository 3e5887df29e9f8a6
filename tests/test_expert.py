import hashlib
import json
import os

import pytest
import torch

from ccoe.backbone import load_backbone
from ccoe.config import ExpertSpec, LayerSelection
from ccoe.expert import create_expert, expert_from_bytes, expert_from_spec, expert_to_bytes, load_expert, save_expert
from ccoe.manifest import read_blob_metadata
from ccoe.model import CCoEModel
from tests.conftest import perturb, tiny_spec


def test_expert_starts_as_a_trainable_copy(backbone):
    expert = create_expert(backbone, "m", "math", LayerSelection(strategy="top", k=2))
    assert expert.layer_indices == (2, 3)
    assert all(p.requires_grad for p in expert.parameters())
    for i in expert.layer_indices:
        assert expert.layer(i) is not backbone.layers[i]
        assert expert.layer(i).self_attn.layer_idx == i
        for (_, mine), (_, theirs) in zip(expert.layer(i).named_parameters(), backbone.layers[i].named_parameters()):
            assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()


def test_expert_state_is_only_its_own_tensors_keyed_by_absolute_index(backbone):
    expert = create_expert(backbone, "m", "math", [1, 3])
    keys = set(expert.tensors())
    backbone_keys = set(backbone.model.state_dict())
    assert keys <= backbone_keys
    assert {k.split(".")[2] for k in keys} == {"1", "3"}
    assert len(keys) == 2 * len([k for k in backbone_keys if k.startswith("model.layers.0.")])


def test_save_load_round_trip_reproduces_logits_exactly(backbone, tmp_path):
    model = CCoEModel(backbone)
    model.push_expert(perturb(create_expert(backbone, "m", "math", [0, 2])))
    info = save_expert(model.experts["m"], tmp_path / "m.safetensors")
    assert info.sha256 == hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind
    ids = torch.randint(0, 97, (2, 6))
    before = model(ids, expert="m").logits
    fresh = CCoEModel(load_backbone(backbone.spec))
    fresh.push_expert(load_expert(tmp_path / "m.safetensors", fresh.backbone, sha256=info.sha256))
    assert torch.equal(fresh(ids, expert="m").logits, before)


def test_blob_metadata_names_the_expert(backbone):
    data = expert_to_bytes(create_expert(backbone, "m", "math", [3, 1]))
    meta = read_blob_metadata(data)
    assert meta["name"] == "m" and meta["domain"] == "math" and json.loads(meta["layers"]) == [1, 3]
    assert meta["backbone_fingerprint"] == backbone.fingerprint
    assert b"pickle" not in data[:200]


def test_corrupt_or_foreign_blobs_are_refused(backbone):
    data = expert_to_bytes(create_expert(backbone, "m", "math", [0]))
    good = hashlib.sha256(data).hexdigest()
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(ValueError, match="sha256 mismatch"):
        expert_from_bytes(tampered, backbone, sha256=good)
    other = load_backbone(tiny_spec(backbone.config.model_type, seed=3))
    with pytest.raises(ValueError, match="was trained on backbone"):
        expert_from_bytes(data, other)
    with pytest.raises(ValueError, match="not a ccoe expert blob"):
        expert_from_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}", backbone)


@pytest.mark.parametrize("bad", ["a/b", "..", "has space", "", "9lives", "x" * 65])
def test_expert_names_must_be_plain_identifiers(backbone, bad):
    with pytest.raises(ValueError, match="plain identifier"):
        create_expert(backbone, bad, "math", [0])
    with pytest.raises(ValueError, match="plain identifier"):
        ExpertSpec(name=bad, domain="math")


def test_expert_from_spec(backbone):
    expert = expert_from_spec(backbone, ExpertSpec(name="law", domain="law", layers=LayerSelection(strategy="middle", k=2)))
    assert expert.layer_indices == (1, 2) and expert.domain == "law"


def test_the_same_expert_gives_the_same_sha256_in_two_processes(tmp_path):
    """safetensors orders `__metadata__` by hash map: without a canonical header, each process wrote
    different bytes for the same expert and content addressing de-duplicated nothing."""
    import subprocess
    import sys

    script = (
        "import hashlib, sys\n"
        "from ccoe.backbone import load_backbone\n"
        "from ccoe.expert import create_expert, expert_to_bytes, expert_from_bytes\n"
        "from tests.conftest import perturb, tiny_spec\n"
        "b = load_backbone(tiny_spec('llama'))\n"
        "data = expert_to_bytes(perturb(create_expert(b, 'law', 'law', [1, 3])))\n"
        "assert expert_to_bytes(expert_from_bytes(data, b)) == data\n"
        "print(hashlib.sha256(data).hexdigest())\n"
    )
    digests = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
        for seed in (1, 2, 3)
    }
    assert len(digests) == 1 and len(digests.pop().strip()) == 64


def test_a_pop_and_push_re_save_adds_exactly_one_blob(tmp_path):
    from ccoe.artifact import save_artifact

    backbone = load_backbone(tiny_spec("llama"))
    model = CCoEModel(backbone)
    for seed, name in enumerate(["math", "law", "sql"], 1):
        model.push_expert(perturb(create_expert(backbone, name, name, [seed]), seed=seed))
    first = save_artifact(model, str(tmp_path))
    model.pop_expert("sql")
    model.push_expert(perturb(create_expert(backbone, "code", "code", [0]), seed=9))
    second = save_artifact(model, str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == sorted(
        f"{e.sha256}.safetensors" for e in [*first.experts.values(), second.experts["code"]])
    assert {n: second.experts[n].sha256 for n in ("math", "law")} == {n: first.experts[n].sha256 for n in ("math", "law")}
