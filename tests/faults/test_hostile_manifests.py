"""Hostile manifests: a manifest is untrusted input (anyone who can register a version writes one).

Each test fails without its fix: before it, `blob` was a free path and `sha256` a free string, so a
manifest could load a blob from outside the store or make the blob cache delete an outside file.
"""

import json
import shutil

import pytest
from pydantic import ValidationError

from ccoe.artifact import load_artifact, save_artifact
from ccoe.backbone import load_backbone
from ccoe.config import cache_root
from ccoe.expert import create_expert
from ccoe.manifest import MANIFEST_NAME, Manifest
from ccoe.model import CCoEModel
from tests.conftest import perturb, tiny_spec


@pytest.fixture
def artifact(tmp_path):
    """A real artifact folder with one expert; returns (folder, its manifest as a dict)."""
    backbone = load_backbone(tiny_spec("llama"))
    model = CCoEModel(backbone)
    model.push_expert(perturb(create_expert(backbone, "math", "math", [1])))
    folder = tmp_path / "artifact"
    save_artifact(model, str(folder))
    return folder, json.loads((folder / MANIFEST_NAME).read_text())


def _write(folder, manifest: dict) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_a_blob_path_outside_the_store_is_refused(artifact, tmp_path):
    folder, manifest = artifact
    entry = manifest["experts"]["math"]
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(folder / "blobs" / f"{entry['sha256']}.safetensors", outside / "evil.safetensors")
    entry["blob"] = "../../outside/evil.safetensors"  # a valid blob, with the right sha256, outside the store
    _write(folder, manifest)
    with pytest.raises(ValidationError, match="not the content address of its sha256"):
        load_artifact(str(folder))


def test_a_sha256_that_is_a_path_cannot_delete_outside_the_cache(artifact):
    folder, manifest = artifact
    victim = cache_root().parent / "x" / "victim.safetensors"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"precious")
    manifest["experts"]["math"]["sha256"] = "../../x/victim"  # cache/blobs/../../x/victim.safetensors
    manifest["experts"]["math"].pop("blob", None)
    _write(folder, manifest)
    with pytest.raises(ValidationError, match="sha256"):
        load_artifact(str(folder))
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("field, value", [
    ("name", "../escape"), ("name", "law\n"), ("domain", "../../etc"), ("sha256", "A" * 64), ("bytes", -1),
])
def test_hostile_names_and_values_are_refused_on_parse(artifact, field, value):
    _, manifest = artifact
    entry = manifest["experts"]["math"]
    if field == "name":
        manifest["experts"] = {value: entry}
    else:
        entry[field] = value
    with pytest.raises(ValidationError):
        Manifest.model_validate(manifest)


def test_the_derived_blob_name_is_the_only_path(artifact):
    """Manifests written before the rule carry `blob`: accepted when it is the content address, and
    never written again (the name is derived)."""
    folder, manifest = artifact
    entry = manifest["experts"]["math"]
    assert "blob" not in entry
    parsed = Manifest.model_validate({**manifest, "experts": {"math": {**entry, "blob": f"blobs/{entry['sha256']}.safetensors"}}})
    assert parsed.experts["math"].blob == f"blobs/{entry['sha256']}.safetensors"
    assert "blob" not in json.loads(parsed.to_json())["experts"]["math"]
    model, _, _ = load_artifact(str(folder))
    assert model.expert_names() == ["math"]


def test_a_manifest_cannot_choose_which_variables_are_sent_as_credentials(artifact, monkeypatch):
    """A hostile `storage` naming any variable (here a password) and an endpoint of its own would have the
    S3 client send that variable's value there as its access key."""
    from ccoe.config import StorageSpec
    from ccoe.manifest import blob_store_for

    _, data = artifact
    data["storage"] = {"uri": "s3://bucket/blobs", "endpoint_url": "http://127.0.0.1:9", "access_key_env": "MLFLOW_TRACKING_PASSWORD",
                       "secret_key_env": "PATH"}
    manifest = Manifest.model_validate(data)
    store = blob_store_for(manifest, None)
    assert (store.spec.access_key_env, store.spec.secret_key_env) == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    assert store.spec.uri == "s3://bucket/blobs"
    with pytest.raises(ValueError, match="not in the configured store"):
        blob_store_for(manifest, None, StorageSpec(uri="s3://bucket/blobs", endpoint_url="http://127.0.0.1:9"))
