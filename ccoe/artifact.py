"""The tensor side of the CCoE artifact: staging expert blobs into a store and loading models.

The manifest itself, pure pop-and-push, and the checks that need no tensors live in `ccoe.manifest`.
`stage_blobs` uploads only missing blobs (each checked first: format, name, backbone fingerprint),
`save_artifact` writes blobs then the manifest last, and loading checks the backbone fingerprint
and every blob's sha256 before any tensor reaches the model; verified blobs are cached locally by hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ccoe.backbone import Backbone, cache_root, load_backbone
from ccoe.config import RouterSpec, StorageSpec, check_name
from ccoe.expert import expert_from_bytes, expert_to_bytes
from ccoe.learned_router import GatedRouter, LearnedRouter, SentenceEncoder
from ccoe.manifest import (
    ExpertEntry, LearnedRouterEntry, Manifest, bare_manifest, blob_store_for, merge, read_blob_metadata, read_manifest, verify_present, write_manifest,
)
from ccoe.model import CCoEModel
from ccoe.router import RuleRouter
from ccoe.storage import BlobStore


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


def fetch_blob(store: BlobStore, entry: ExpertEntry | LearnedRouterEntry, use_cache: bool = True) -> bytes:
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


def save_artifact(model: CCoEModel, root: str | StorageSpec, router: RouterSpec | None = None, parent: int | None = None) -> Manifest:
    """Write every expert blob (skipping ones present), check them, then write the manifest last."""
    store = BlobStore(root)
    entries = stage_blobs(store, [ExpertBlob(expert_to_bytes(e)) for e in model.experts.values()], model.fingerprint)
    manifest = merge(bare_manifest(model.backbone, router=router), entries, parent=parent)
    verify_present(manifest, store, [e.sha256 for e in entries.values()])
    write_manifest(store, manifest)
    return manifest


def stage_router(store: BlobStore, router: LearnedRouter, experts: Mapping[str, str], metrics: Mapping[str, float] = ()) -> LearnedRouterEntry:
    """Put a learned router's blob into the store; its manifest entry. `experts`: {expert: domain} it
    was trained for (every domain must be one of the router's classes)."""
    missing = sorted(set(experts.values()) - set(router.domains))
    if missing:
        raise ValueError(f"the learned router does not know the domains {missing} of these experts; train it on them")
    data = router.to_bytes()
    _, sha = store.put_blob(data)
    return LearnedRouterEntry(sha256=sha, bytes=len(data), encoder_fingerprint=router.encoder_fingerprint, domains=list(router.domains),
                              experts=sorted(experts), threshold=router.threshold, metrics=dict(metrics))


def expert_mapping(manifest: Manifest) -> dict[str, dict[str, float]]:
    """The expert–domain matrix: the manifest's router mapping, else each expert serves its own domain."""
    if manifest.router is not None and manifest.router.mapping:
        return {e: dict(row) for e, row in manifest.router.mapping.items()}
    return {name: {entry.domain: 1.0} for name, entry in manifest.experts.items()}


def router_from_manifest(manifest: Manifest, store: BlobStore, use_cache: bool = True) -> RuleRouter | GatedRouter | None:
    """The manifest's gate: the learned router (blob sha256 checked) with the rules as its fallback when
    it is current for the manifest's experts; the rules alone otherwise (a stale learned router is
    skipped with a warning: it does not know the experts pushed since it was trained)."""
    rules = RuleRouter(manifest.router) if manifest.router is not None else None
    entry = manifest.learned_router
    if entry is None:
        return rules
    if not manifest.router_is_current():
        warnings.warn(f"the learned router was trained for experts {entry.experts}, not {sorted(manifest.routable_experts())}: "
                      "routing by the rules until it is trained again (`ccoe router train`)", stacklevel=2)
        return rules
    encoder = SentenceEncoder()
    learned = LearnedRouter.from_bytes(fetch_blob(store, entry, use_cache), encoder.fingerprint, encoder.dim)
    return GatedRouter(learned, encoder, expert_mapping(manifest), rules)


def load_checked_backbone(manifest: Manifest, device: str = "cpu", dtype: str | None = None) -> Backbone:
    """The manifest's backbone (in `dtype` when given), refused unless its fingerprint is the manifest's:
    experts trained on other weights must never run on it."""
    spec = manifest.backbone.spec if dtype is None else manifest.backbone.spec.model_copy(update={"dtype": dtype})
    backbone = load_backbone(spec, device=device)
    if backbone.fingerprint != manifest.backbone.fingerprint:
        raise ValueError(
            f"backbone {spec.source!r} has fingerprint {backbone.fingerprint[:12]}…, but the artifact was built on "
            f"{manifest.backbone.fingerprint[:12]}…; its experts do not belong to this backbone"
        )
    return backbone


def model_from_manifest(
    manifest: Manifest, store: BlobStore, device: str = "cpu", dtype: str | None = None, use_cache: bool = True
) -> tuple[CCoEModel, RuleRouter | GatedRouter | None]:
    """Backbone + experts of a manifest: fingerprint first, then each blob's sha256, then tensors."""
    backbone = load_checked_backbone(manifest, device, dtype)
    model = CCoEModel(backbone)
    for name, entry in manifest.experts.items():
        expert = expert_from_bytes(fetch_blob(store, entry, use_cache), backbone, sha256=entry.sha256)
        if expert.name != name:
            raise ValueError(f"manifest entry {name!r} points at a blob of expert {expert.name!r}")
        model.push_expert(expert)
    return model, router_from_manifest(manifest, store, use_cache)


def load_artifact(root: str | StorageSpec, device: str = "cpu", dtype: str | None = None) -> tuple[CCoEModel, RuleRouter | GatedRouter | None, Manifest]:
    manifest = read_manifest(root)
    model, router = model_from_manifest(manifest, blob_store_for(manifest, root), device, dtype)
    return model, router, manifest
