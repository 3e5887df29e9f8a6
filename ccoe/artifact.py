"""The CCoE artifact: a small JSON manifest plus expert blobs addressed by sha256, and its merge.

    <store>/blobs/<sha256>.safetensors   one blob per expert version: only that expert's tensors
    ccoe.json                            the manifest (next to the blobs for a plain artifact folder;
                                         in an MLflow model version for the registry)

The manifest names the backbone (spec + fingerprint), where blobs live (`storage`; None = the
manifest's own folder), each expert (domain, layers, blob, sha256, bytes, backbone fingerprint,
training run, data fingerprint, metrics), the router, and the registry version it was merged from.

Pop-and-push is a pure function on manifests (`push`, `pop`, `merge`): unchanged experts keep their
entries (and blobs) as they were, so a new version costs the new expert's bytes. The I/O around it
(`stage_blobs`, `verify_present`) uploads only missing blobs and checks that every referenced blob is
there before a manifest is published. Loading checks the backbone fingerprint and every blob's
sha256 before any tensor reaches the model; verified blobs are cached locally by hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ccoe.backbone import Backbone, cache_root, load_backbone
from ccoe.config import BackboneSpec, RouterSpec, Spec, StorageSpec, check_name
from ccoe.expert import expert_from_bytes, expert_to_bytes, read_blob_metadata
from ccoe.model import CCoEModel
from ccoe.router import RuleRouter
from ccoe.storage import BlobStore, StoredBlob, blob_name

MANIFEST_NAME = "ccoe.json"
MANIFEST_FORMAT = "ccoe-manifest/1"


class BackboneEntry(Spec):
    spec: BackboneSpec
    fingerprint: str


SHA256_PATTERN = r"[0-9a-f]{64}"


class ExpertEntry(Spec):
    """One expert of a manifest. Its blob's name is derived from `sha256`, never read from the manifest.

    Why: a manifest is untrusted input (anyone who can register a version writes one). A `blob` path
    such as `../../outside/evil.safetensors` would load or delete files outside the store and the
    cache, so the hash is validated as 64 hex digits and the only path ever built is
    `blobs/<sha256>.safetensors`. Manifests written before this rule carried a `blob` key; it is
    accepted only when it is exactly that derived name.
    """

    domain: str
    layers: list[int]
    sha256: str = Field(pattern=f"^{SHA256_PATTERN}$", description="sha256 of the blob's bytes (64 lowercase hex digits)")
    bytes: int = Field(ge=0)
    backbone_fingerprint: str
    run_id: str | None = None
    data_fingerprint: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_blob(cls, data):
        if isinstance(data, dict) and "blob" in data:
            data = dict(data)
            given, sha = data.pop("blob"), data.get("sha256")
            if not (isinstance(sha, str) and re.fullmatch(SHA256_PATTERN, sha) and given == blob_name(sha)):
                raise ValueError(
                    f"manifest blob {given!r} is not the content address of its sha256 {sha!r}; a blob must be "
                    "`blobs/<sha256>.safetensors` (64 lowercase hex digits): the manifest is corrupt or hostile"
                )
        return data

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return check_name(value, "domain name")

    @property
    def blob(self) -> str:
        """The blob's name under the store root: `blobs/<sha256>.safetensors`."""
        return blob_name(self.sha256)


class Manifest(Spec):
    format: Literal["ccoe-manifest/1"] = MANIFEST_FORMAT
    backbone: BackboneEntry
    storage: StorageSpec | None = None
    experts: dict[str, ExpertEntry] = Field(default_factory=dict)
    router: RouterSpec | None = None
    parent: int | None = None

    @field_validator("experts")
    @classmethod
    def _expert_names(cls, value: dict[str, ExpertEntry]) -> dict[str, ExpertEntry]:
        for name in value:
            check_name(name)
        return value

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def bare_manifest(backbone: Backbone, storage: StorageSpec | None = None, router: RouterSpec | None = None) -> Manifest:
    """The starting point of a registry: the backbone and no experts."""
    return Manifest(backbone=BackboneEntry(spec=backbone.spec, fingerprint=backbone.fingerprint), storage=storage, router=router)


# -- pop and push: pure functions on manifests ------------------------------------------------------


def push(manifest: Manifest, name: str, entry: ExpertEntry) -> Manifest:
    """Add an expert or replace the one with the same name. Pushing an identical entry changes nothing."""
    check_name(name)
    if entry.backbone_fingerprint != manifest.backbone.fingerprint:
        raise ValueError(
            f"expert {name!r} was trained on backbone {entry.backbone_fingerprint[:12]}…, but this artifact's backbone is "
            f"{manifest.backbone.fingerprint[:12]}…; retrain it on this backbone"
        )
    return manifest.model_copy(update={"experts": {**manifest.experts, name: entry}})


def pop(manifest: Manifest, name: str) -> Manifest:
    if name not in manifest.experts:
        raise KeyError(f"cannot pop expert {name!r}: the artifact has {sorted(manifest.experts)}")
    return manifest.model_copy(update={"experts": {k: v for k, v in manifest.experts.items() if k != name}})


def merge(
    base: Manifest,
    pushes: Mapping[str, ExpertEntry] = (),
    pops: Iterable[str] = (),
    router: RouterSpec | None = None,
    parent: int | None = None,
) -> Manifest:
    """Pops, then pushes, then the router (if given) and the parent version. Validates everything first."""
    pushes, pops = dict(pushes), list(pops)
    for name in [*pushes, *pops]:
        check_name(name)
    result = base
    for name in pops:
        result = pop(result, name)
    for name, entry in pushes.items():
        result = push(result, name, entry)
    update = {"parent": parent}
    if router is not None:
        update["router"] = router
    return result.model_copy(update=update)


# -- I/O around the merge ---------------------------------------------------------------------------


@dataclass
class ExpertBlob:
    """An expert blob to publish, with its lineage."""

    data: bytes
    run_id: str | None = None
    data_fingerprint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def stage_blobs(store: BlobStore, blobs: Sequence[ExpertBlob], fingerprint: str | None = None) -> dict[str, ExpertEntry]:
    """Upload blobs that are not in the store yet; return their manifest entries by expert name.

    Every blob is checked (format, name, backbone fingerprint, duplicate names) before anything is
    written, so a bad input leaves the store untouched.
    """
    metas = [read_blob_metadata(b.data) for b in blobs]
    names = [check_name(m["name"]) for m in metas]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"several blobs for the same expert in one merge: {repeated}")
    if fingerprint is not None:
        for meta in metas:
            if meta["backbone_fingerprint"] != fingerprint:
                raise ValueError(
                    f"expert {meta['name']!r} was trained on backbone {meta['backbone_fingerprint'][:12]}…, "
                    f"not this artifact's {fingerprint[:12]}…; nothing was written"
                )
    entries = {}
    for blob, meta in zip(blobs, metas):
        _, sha = store.put_blob(blob.data)
        entries[meta["name"]] = ExpertEntry(
            domain=meta["domain"], layers=json.loads(meta["layers"]), sha256=sha, bytes=len(blob.data),
            backbone_fingerprint=meta["backbone_fingerprint"], run_id=blob.run_id,
            data_fingerprint=blob.data_fingerprint, metrics=blob.metrics,
        )
    return entries


def verify_present(manifest: Manifest, store: BlobStore, just_written: Iterable[str] = ()) -> None:
    """Every referenced blob is in the store with its recorded size and sha256.

    Blobs in `just_written` (sha256s that `stage_blobs` wrote or verified in this call) are not checked
    again; every other blob is checked by content (`BlobStore.has_blob`: hashed once per store version,
    so a same-size corruption is caught before a version that cannot load is published).
    """
    fresh, problems = set(just_written), []
    for name, entry in manifest.experts.items():
        if entry.sha256 in fresh:
            continue
        if not store.exists(entry.blob):
            problems.append(f"{name}: {store.url(entry.blob)} is missing")
        elif store.size(entry.blob) != entry.bytes:
            problems.append(f"{name}: {store.url(entry.blob)} has {store.size(entry.blob)} bytes, manifest says {entry.bytes}")
        elif not store.has_blob(entry.sha256, entry.bytes):
            problems.append(f"{name}: {store.url(entry.blob)} does not match its sha256 {entry.sha256[:12]}… (corrupt); "
                            "push the expert again to repair it")
    if problems:
        raise FileNotFoundError("manifest references blobs that are not in place:\n  " + "\n  ".join(problems))


def fetch_blob(store: BlobStore, entry: ExpertEntry, use_cache: bool = True) -> bytes:
    """Blob bytes with their sha256 verified; served from `$CCOE_CACHE/blobs/` when cached."""
    cached = cache_root() / "blobs" / f"{entry.sha256}.safetensors"
    if use_cache and cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == entry.sha256:
            return data
        cached.unlink()
    data = store.get(entry.blob)
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256:
        raise ValueError(f"expert blob sha256 mismatch at {store.url(entry.blob)}: expected {entry.sha256}, got {actual}")
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(cached)
    return data


@dataclass(frozen=True)
class GarbageReport:
    """What `collect_garbage` found: blobs nothing references (removed unless a dry run), and
    unreferenced blobs it kept because they are younger than the grace period."""

    referenced: int
    unreferenced: tuple[StoredBlob, ...]
    too_recent: tuple[StoredBlob, ...]
    deleted: bool

    @property
    def reclaimable_bytes(self) -> int:
        return sum(b.bytes for b in self.unreferenced)


def collect_garbage(store: BlobStore, referenced: Iterable[str], *, delete: bool = False, min_age_s: float = 3600.0,
                    now: float | None = None) -> GarbageReport:
    """Blobs of `store` that no sha256 in `referenced` names; removed only with `delete=True`.

    `referenced` must come from every manifest that may use this store (all registry versions,
    whatever their alias or status, and every artifact folder given). Blobs younger than `min_age_s`
    are kept: a merge uploads its blobs before it registers the version that references them.
    """
    keep, now = set(referenced), time.time() if now is None else now
    stored = [b for b in store.list_blobs() if b.sha256 not in keep]
    old = tuple(b for b in stored if now - b.modified >= min_age_s)
    recent = tuple(b for b in stored if now - b.modified < min_age_s)
    if delete:
        for blob in old:
            store.remove_blob(blob.sha256)
    return GarbageReport(len(keep), old, recent, delete)


# -- plain artifact folders -------------------------------------------------------------------------


def write_manifest(store: BlobStore, manifest: Manifest) -> None:
    store.put_file(MANIFEST_NAME, manifest.to_json().encode())


def read_manifest(root: str | StorageSpec) -> Manifest:
    store = BlobStore(root)
    if not store.exists(MANIFEST_NAME):
        raise FileNotFoundError(f"no CCoE artifact at {store.spec.uri}: {MANIFEST_NAME} is missing")
    return Manifest.model_validate_json(store.get(MANIFEST_NAME))


def save_artifact(model: CCoEModel, root: str | StorageSpec, router: RouterSpec | None = None, parent: int | None = None) -> Manifest:
    """Write every expert blob (skipping ones present), check them, then write the manifest last."""
    store = BlobStore(root)
    entries = stage_blobs(store, [ExpertBlob(expert_to_bytes(e)) for e in model.experts.values()], model.fingerprint)
    manifest = merge(bare_manifest(model.backbone, router=router), entries, parent=parent)
    verify_present(manifest, store, [e.sha256 for e in entries.values()])
    write_manifest(store, manifest)
    return manifest


def blob_store_for(manifest: Manifest, manifest_root: str | StorageSpec | None) -> BlobStore:
    if manifest.storage is not None:
        return BlobStore(manifest.storage)
    if manifest_root is None:
        raise ValueError("this manifest keeps its blobs next to itself, but no manifest folder was given")
    return BlobStore(manifest_root)


def model_from_manifest(
    manifest: Manifest, store: BlobStore, device: str = "cpu", dtype: str | None = None, use_cache: bool = True
) -> tuple[CCoEModel, RuleRouter | None]:
    """Backbone + experts of a manifest: fingerprint first, then each blob's sha256, then tensors."""
    spec = manifest.backbone.spec if dtype is None else manifest.backbone.spec.model_copy(update={"dtype": dtype})
    backbone = load_backbone(spec, device=device)
    if backbone.fingerprint != manifest.backbone.fingerprint:
        raise ValueError(
            f"backbone {spec.source!r} has fingerprint {backbone.fingerprint[:12]}…, but the artifact was built on "
            f"{manifest.backbone.fingerprint[:12]}…; its experts do not belong to this backbone"
        )
    model = CCoEModel(backbone)
    for name, entry in manifest.experts.items():
        expert = expert_from_bytes(fetch_blob(store, entry, use_cache), backbone, sha256=entry.sha256)
        if expert.name != name:
            raise ValueError(f"manifest entry {name!r} points at a blob of expert {expert.name!r}")
        model.push_expert(expert)
    return model, RuleRouter(manifest.router) if manifest.router is not None else None


def load_artifact(root: str | StorageSpec, device: str = "cpu", dtype: str | None = None) -> tuple[CCoEModel, RuleRouter | None, Manifest]:
    manifest = read_manifest(root)
    model, router = model_from_manifest(manifest, blob_store_for(manifest, root), device, dtype)
    return model, router, manifest
