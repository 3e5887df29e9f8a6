"""The CCoE manifest: what a registered version or an artifact folder holds, and pure pop-and-push.

    <store>/blobs/<sha256>.safetensors   one blob per expert version: only that expert's tensors
    ccoe.json                            the manifest (next to the blobs for a plain artifact folder;
                                         in an MLflow model version for the registry)

The manifest names the backbone (spec + fingerprint), where blobs live (`storage`; None = the
manifest's own folder), each expert (domain, layers, sha256, bytes, backbone fingerprint, training
run, data fingerprint, metrics), the router, and the registry version it was merged from.

Pop-and-push is a pure function on manifests (`push`, `pop`, `merge`): unchanged experts keep their
entries (and blobs) as they were, so a new version costs the new expert's bytes. This module needs no
tensor library (pydantic + the blob store only), so reading, routing and garbage-collecting
manifests stays fast; `ccoe.artifact` adds the tensor side (staging blobs, loading models).
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from ccoe.config import BackboneSpec, RouterSpec, Spec, StorageSpec, check_name
from ccoe.storage import BlobStore, StoredBlob, blob_name

if TYPE_CHECKING:
    from ccoe.backbone import Backbone

MANIFEST_NAME = "ccoe.json"
MANIFEST_FORMAT = "ccoe-manifest/1"
PLANNER_DOMAIN = "planning"  # the planner expert's domain (ccoe.planning): in the manifest, never a routing target


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
    parent_sha256: str | None = Field(None, pattern=f"^{SHA256_PATTERN}$", description="the expert it continued from (lineage); None: from the backbone")
    shards: list[str] = Field(default_factory=list, description="sha256 of every data shard this expert has seen, in arrival order")

    @field_validator("shards")
    @classmethod
    def _shards(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not isinstance(s, str) or not re.fullmatch(SHA256_PATTERN, s)]
        if bad or len(set(value)) != len(value):
            raise ValueError("expert `shards` must be distinct sha256 digests (64 lowercase hex digits)")
        return value

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


class TrainedExpert(Spec):
    """What a finished training job hands to the merge step: the expert's manifest entry (layers, blob
    sha256, backbone fingerprint, training run, data fingerprint, metrics) and where its blob is.

    A job of the pipeline puts its blob into the pipeline's blob store itself (`stored_in`), so the
    merge references it without moving bytes and without the trainer's disk. It crosses process and
    flow-run boundaries as JSON and is validated when read back.
    """

    name: str
    entry: ExpertEntry
    stored_in: StorageSpec | None = Field(None, description="the blob store holding the blob; None: only blob_path and the MLflow run")
    blob_path: str = Field(description="the trainer's local copy of the blob")
    checkpoint_path: str | None = None
    seconds: float = Field(ge=0, description="wall seconds of the job in its own process")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


class LearnedRouterEntry(Spec):
    """The learned router of a manifest (`ccoe.learned_router`): a blob named by its sha256 like an
    expert's, the domains it tells apart, and the experts it was trained for (a router whose experts
    differ from the manifest's is stale, and the pipeline trains a new one)."""

    sha256: str = Field(pattern=f"^{SHA256_PATTERN}$")
    bytes: int = Field(ge=0)
    encoder_fingerprint: str = Field(description="sha256 of the sentence encoder's weights it was trained on")
    domains: list[str]
    experts: list[str]
    threshold: float = Field(gt=0.0, lt=1.0)
    metrics: dict[str, float] = Field(default_factory=dict)

    @field_validator("domains", "experts")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            check_name(name, "router domain or expert name")
        return value

    @property
    def blob(self) -> str:
        return blob_name(self.sha256)


class Manifest(Spec):
    format: Literal["ccoe-manifest/1"] = MANIFEST_FORMAT
    backbone: BackboneEntry
    storage: StorageSpec | None = None
    experts: dict[str, ExpertEntry] = Field(default_factory=dict)
    router: RouterSpec | None = None
    learned_router: LearnedRouterEntry | None = None
    parent: int | None = None

    def blob_entries(self) -> dict[str, ExpertEntry | LearnedRouterEntry]:
        """Every blob this manifest references, by what uses it (expert names; `learned_router`)."""
        blobs: dict[str, ExpertEntry | LearnedRouterEntry] = dict(self.experts)
        if self.learned_router is not None:
            blobs["learned_router"] = self.learned_router
        return blobs

    def routable_experts(self) -> dict[str, ExpertEntry]:
        """The experts a request can be routed to: all but the planner (domain PLANNER_DOMAIN)."""
        return {name: e for name, e in self.experts.items() if e.domain != PLANNER_DOMAIN}

    def router_is_current(self) -> bool:
        """A learned router exists and was trained for exactly this manifest's routable experts and domains
        (its class PLANNER_DOMAIN, composed queries, is no expert's domain and does not count)."""
        r, experts = self.learned_router, self.routable_experts()
        return (r is not None and sorted(r.experts) == sorted(experts)
                and set(r.domains) - {PLANNER_DOMAIN} == {e.domain for e in experts.values()})

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
    learned_router: LearnedRouterEntry | None = None,
) -> Manifest:
    """Pops, then pushes, then the routers (if given) and the parent version. Validates everything first.
    A learned router kept from `base` stays in place until a new one is given (`Manifest.router_is_current`
    tells whether it still fits the experts)."""
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
    if learned_router is not None:
        update["learned_router"] = learned_router
    return result.model_copy(update=update)


# -- checks and reads of stored manifests and blobs --------------------------------------------------

BLOB_FORMAT = "ccoe-expert/1"
ROUTER_FORMAT = "ccoe-router/1"


def _safetensors_metadata(data: bytes, expected: str, what: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob, read from its JSON header without loading tensors."""
    if len(data) < 8:
        raise ValueError(f"{what} blob is truncated: fewer than 8 bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError(f"{what} blob is truncated: header runs past the end of the file")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{what} blob header is not JSON: not a safetensors file") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    if metadata.get("ccoe_format") != expected:
        raise ValueError(f"not a ccoe {what} blob (ccoe_format={metadata.get('ccoe_format')!r}, expected {expected!r})")
    return metadata


def read_blob_metadata(data: bytes) -> dict[str, str]:
    return _safetensors_metadata(data, BLOB_FORMAT, "expert")


def read_router_metadata(data: bytes) -> dict[str, str]:
    return _safetensors_metadata(data, ROUTER_FORMAT, "router")


def verify_present(manifest: Manifest, store: BlobStore, just_written: Iterable[str] = ()) -> None:
    """Every referenced blob is in the store with its recorded size and sha256.

    Blobs in `just_written` (sha256s that `stage_blobs` wrote or verified in this call) are not checked
    again; every other blob is checked by content (`BlobStore.has_blob`: hashed once per store version,
    so a same-size corruption is caught before a version that cannot load is published).
    """
    fresh, problems = set(just_written), []
    for name, entry in manifest.blob_entries().items():
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


def collect_garbage(store: BlobStore, referenced: Iterable[str], *, delete: bool = False, min_age_s: float = 86400.0,
                    now: float | None = None) -> GarbageReport:
    """Blobs of `store` that no sha256 in `referenced` names; removed only with `delete=True`.

    `referenced` must come from every manifest that may use this store (all registry versions,
    whatever their alias or status, and every artifact folder given). Blobs younger than `min_age_s`
    are kept: training jobs put their blobs into the store as they finish, and the merge that references
    them runs after the slowest job (hours, for real experts).
    """
    keep, now = set(referenced), time.time() if now is None else now
    stored = [b for b in store.list_blobs() if b.sha256 not in keep]
    old = tuple(b for b in stored if now - b.modified >= min_age_s)
    recent = tuple(b for b in stored if now - b.modified < min_age_s)
    if delete:
        for blob in old:
            store.remove_blob(blob.sha256)
    return GarbageReport(len(keep), old, recent, delete)


def write_manifest(store: BlobStore, manifest: Manifest) -> None:
    store.put_file(MANIFEST_NAME, manifest.to_json().encode())


def read_manifest(root: str | StorageSpec) -> Manifest:
    store = BlobStore(root)
    if not store.exists(MANIFEST_NAME):
        raise FileNotFoundError(f"no CCoE artifact at {store.spec.uri}: {MANIFEST_NAME} is missing")
    return Manifest.model_validate_json(store.get(MANIFEST_NAME))


def blob_store_for(manifest: Manifest, manifest_root: str | StorageSpec | None, configured: StorageSpec | None = None) -> BlobStore:
    """The blob store of a manifest's experts.

    A manifest is untrusted: its `storage` may say where the blobs are, but not which environment
    variables hold the credentials (a hostile manifest could name any variable, say a password, and an
    endpoint of its own, and the S3 client would send that value there as its access key). With
    `configured` (the caller's own store, e.g. a pipeline's) the manifest's must be that store, and
    the configured one is used; without, only the default AWS variables and credential chain are used.
    """
    if manifest.storage is not None:
        if configured is not None:
            if manifest.storage != configured:
                raise ValueError(f"the manifest keeps its blobs at {manifest.storage.uri}, not in the configured store {configured.uri}")
            return BlobStore(configured)
        return BlobStore(StorageSpec(uri=manifest.storage.uri, endpoint_url=manifest.storage.endpoint_url, region=manifest.storage.region))
    if manifest_root is None:
        raise ValueError("this manifest keeps its blobs next to itself, but no manifest folder was given")
    return BlobStore(manifest_root)
