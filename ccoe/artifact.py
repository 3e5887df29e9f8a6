"""The CCoE artifact: a small JSON manifest (`ccoe.json`) plus expert blobs addressed by sha256.

Layout under any fsspec root (a local folder, `s3://bucket/prefix`, ...):

    ccoe.json                          manifest: backbone source + fingerprint, experts, router
    blobs/<sha256>.safetensors         one blob per expert, only that expert's tensors

Writing uploads only blobs that are not already present and writes the manifest last, so a reader
never sees a manifest whose blobs are missing. Loading verifies the backbone fingerprint and every
blob's sha256 before any expert tensor reaches the model.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Literal

import fsspec
from pydantic import Field

from ccoe.backbone import load_backbone
from ccoe.config import BackboneSpec, RouterSpec, Spec
from ccoe.expert import Expert, expert_from_bytes, expert_to_bytes
from ccoe.model import CCoEModel
from ccoe.router import RuleRouter

MANIFEST_NAME = "ccoe.json"
MANIFEST_FORMAT = "ccoe-manifest/1"


class BackboneEntry(Spec):
    spec: BackboneSpec
    fingerprint: str


class ExpertEntry(Spec):
    domain: str
    layers: list[int]
    blob: str = Field(description="blob path relative to the artifact root, or an absolute URI")
    sha256: str
    bytes: int
    run_id: str | None = None
    data_fingerprint: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class Manifest(Spec):
    format: Literal["ccoe-manifest/1"] = MANIFEST_FORMAT
    backbone: BackboneEntry
    experts: dict[str, ExpertEntry] = Field(default_factory=dict)
    router: RouterSpec | None = None
    parent: str | None = None


def _join(root: str, name: str) -> str:
    return name if "://" in name or name.startswith("/") else f"{root.rstrip('/')}/{name}"


def blob_name(sha256: str) -> str:
    return f"blobs/{sha256}.safetensors"


def put_blob(root: str, data: bytes) -> tuple[str, str]:
    """Upload blob bytes unless a blob with the same hash exists; return (relative name, sha256)."""
    sha = hashlib.sha256(data).hexdigest()
    name = blob_name(sha)
    fs, path = fsspec.core.url_to_fs(_join(root, name))
    if not fs.exists(path):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    return name, sha


def get_blob(root: str, entry: ExpertEntry) -> bytes:
    with fsspec.open(_join(root, entry.blob), "rb") as handle:
        return handle.read()


def expert_entry(expert: Expert, blob: str, sha256: str, num_bytes: int, **lineage) -> ExpertEntry:
    return ExpertEntry(domain=expert.domain, layers=list(expert.layer_indices), blob=blob, sha256=sha256, bytes=num_bytes, **lineage)


def write_manifest(root: str, manifest: Manifest) -> None:
    fs, path = fsspec.core.url_to_fs(_join(root, MANIFEST_NAME))
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    fs.pipe_file(tmp, manifest.model_dump_json(indent=2).encode())
    fs.mv(tmp, path)


def read_manifest(root: str) -> Manifest:
    uri = _join(str(root), MANIFEST_NAME)
    try:
        with fsspec.open(uri, "rb") as handle:
            return Manifest.model_validate_json(handle.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"no CCoE artifact at {root}: {MANIFEST_NAME} is missing") from None


def save_artifact(model: CCoEModel, root: str, router: RouterSpec | None = None, parent: str | None = None) -> Manifest:
    """Write every expert blob (skipping ones already present), then the manifest."""
    root = str(root)
    entries = {}
    for name, expert in model.experts.items():
        data = expert_to_bytes(expert)
        blob, sha = put_blob(root, data)
        entries[name] = expert_entry(expert, blob, sha, len(data))
    manifest = Manifest(
        backbone=BackboneEntry(spec=model.backbone.spec, fingerprint=model.fingerprint),
        experts=entries,
        router=router,
        parent=parent,
    )
    write_manifest(root, manifest)
    return manifest


def load_artifact(root: str, device: str = "cpu", dtype: str | None = None) -> tuple[CCoEModel, RuleRouter | None, Manifest]:
    """Load the backbone and every expert of an artifact, verifying fingerprints and hashes."""
    root = str(root)
    manifest = read_manifest(root)
    spec = manifest.backbone.spec if dtype is None else manifest.backbone.spec.model_copy(update={"dtype": dtype})
    backbone = load_backbone(spec, device=device)
    if backbone.fingerprint != manifest.backbone.fingerprint:
        raise ValueError(
            f"backbone {spec.source!r} has fingerprint {backbone.fingerprint[:12]}…, but the artifact was built on "
            f"{manifest.backbone.fingerprint[:12]}…; its experts do not belong to this backbone"
        )
    model = CCoEModel(backbone)
    for name, entry in manifest.experts.items():
        expert = expert_from_bytes(get_blob(root, entry), backbone, sha256=entry.sha256)
        if expert.name != name:
            raise ValueError(f"manifest entry {name!r} points at a blob of expert {expert.name!r}")
        model.push_expert(expert)
    router = RuleRouter(manifest.router) if manifest.router is not None else None
    return model, router, manifest
