"""The experts a server holds, and the registry alias it follows: swap a new champion in, pop only what changed.

Resident experts are keyed by their blob's content, `e<sha256[:16]>`, not by name: when the champion
moves, an expert whose blob did not change keeps its key and its tensors (nothing is loaded), a new
blob is loaded once, and the old `law` and the new `law` can be resident side by side. Requests
resolve their expert through the version that is current when they arrive and keep that key until
they finish, so requests that started on the old version finish on the old experts; a key is popped
once no current expert and no active or waiting request uses it.

Blobs are fetched, verified (sha256, backbone fingerprint) and built into modules in the follower's
thread; only the push, the switch of the current version and the pops run in the batcher's loop
thread, between two decode steps.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ccoe.artifact import fetch_blob, load_checked_backbone, router_from_manifest
from ccoe.expert import expert_from_bytes
from ccoe.manifest import Manifest, blob_store_for
from ccoe.model import CCoEModel, Route
from ccoe.serving.batching import ContinuousBatcher, Event, RequestHandle, SamplingParams

AUTO, BACKBONE, PLAN = "auto", "backbone", "plan"


def resident_key(sha256: str) -> str:
    """The model key of a resident expert: its blob's content address (a valid expert name)."""
    return f"e{sha256[:16]}"


@dataclass(frozen=True)
class ServedVersion:
    """What requests are answered with now: a manifest, where each of its experts lives in the model, its gate."""

    source: str
    version: int | None
    manifest: Manifest
    keys: dict[str, str]
    router: object | None
    store: object
    loaded_at: float = field(default_factory=time.time)

    @property
    def label(self) -> str:
        return self.source if self.version is None else f"{self.source} (version {self.version})"

    def model_names(self) -> list[str]:
        """What a request's `model` may be: auto, backbone, plan (with a planner expert), every routable expert."""
        planner = len(self.manifest.experts) > len(self.manifest.routable_experts())
        return [AUTO, BACKBONE, *([PLAN] if planner else []), *sorted(self.manifest.routable_experts())]


@dataclass(frozen=True)
class Resolved:
    """A request's expert: the name a person reads, the model key it runs on, and why."""

    expert: str | None
    key: Route
    reason: str
    version: str


class UnknownModel(ValueError):
    """A request named a model this server does not serve (HTTP 404)."""


class ManifestSource:
    """Where manifests come from: an artifact folder / fsspec root, or a registry URI that may move."""

    def __init__(self, ref: str, tracking_uri: str | None = None):
        self.ref, self.tracking_uri = ref, tracking_uri
        self.is_registry = ref.startswith("models:/")

    def read(self) -> tuple[Manifest, int | None]:
        from ccoe.cli import read_manifest_version

        return read_manifest_version(self.ref, self.tracking_uri)

    def store(self, manifest: Manifest):
        return blob_store_for(manifest, None if self.is_registry else self.ref)


class ExpertPool:
    """The served model: a backbone, the resident experts, the current version, and the batcher."""

    def __init__(self, source: ManifestSource, *, device: str = "cpu", dtype: str | None = None,
                 max_resident: int | None = None, pin: Sequence[str] = (), grouped_layers: bool = True,
                 batcher: Callable[[CCoEModel, object], ContinuousBatcher] = ContinuousBatcher):
        """`max_resident`: at most this many experts in memory (None: every expert of the current version,
        loaded up front); others are loaded on their first request and the least recently used unpinned
        expert that no request uses is evicted. `pin`: expert names that stay resident. `grouped_layers`:
        mixed-expert steps run each expert layer as one grouped call (`CCoEModel.grouped_layers`)."""
        if max_resident is not None and len(pin) > max_resident:
            raise ValueError(f"{len(pin)} pinned experts do not fit max_resident={max_resident}")
        self.source, self.max_resident, self.pin = source, max_resident, tuple(pin)
        manifest, version = source.read()
        backbone = load_checked_backbone(manifest, device, dtype)
        self.model, self.tokenizer = CCoEModel(backbone, grouped_layers=grouped_layers), backbone.tokenizer
        self.swaps, self.loads, self.reused, self.hits, self.evictions = 0, 0, 0, 0, 0
        self.last_error: str | None = None
        self._lock = threading.RLock()  # a request's resolve + queue, against a swap's switch + pops
        self._used: OrderedDict[str, None] = OrderedDict()  # resident keys, least recently used first
        self._loading: dict[str, threading.Lock] = {}
        modules, self.current = self._prepare(manifest, version)
        for module in modules:
            self.model.push_expert(module)
        self.engine = batcher(self.model, self.tokenizer)

    def _prepare(self, manifest: Manifest, version: int | None) -> tuple[list, ServedVersion]:
        """Verified modules for the manifest's blobs that must be resident and are not (all of them, or
        the pinned ones under `max_resident`), and the version to serve."""
        if manifest.backbone.fingerprint != self.model.fingerprint:
            raise ValueError(f"{self.source.ref} now names backbone {manifest.backbone.fingerprint[:12]}…, not the served "
                             f"{self.model.fingerprint[:12]}…; restart the server to change backbones")
        unknown = sorted(set(self.pin) - set(manifest.experts))
        if unknown:
            raise ValueError(f"pinned experts {unknown} are not in {self.source.ref}; it has {sorted(manifest.experts)}")
        store = self.source.store(manifest)
        modules, keys = [], {}
        for name, entry in manifest.experts.items():
            key = keys[name] = resident_key(entry.sha256)
            if key in self.model.experts or any(m.name == key for m in modules):
                self.reused += 1
            elif self.max_resident is None or name in self.pin:
                modules.append(self._build(store, entry, key))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a stale learned router falls back to the rules; /v1/models says which gate
            router = router_from_manifest(manifest, store)
        return modules, ServedVersion(self.source.ref, version, manifest, keys, router, store)

    def _build(self, store, entry, key: str):
        """An expert module from its blob (sha256 and backbone fingerprint checked), under its resident key."""
        module = expert_from_bytes(fetch_blob(store, entry), self.model.backbone, sha256=entry.sha256, name=key)
        self.loads += 1
        return module

    def _ensure_resident(self, resolved: Resolved, served: ServedVersion) -> None:
        """Load a cold expert (in the caller's thread) and push it between two steps; one load per key at a time."""
        if resolved.key is None or resolved.key in self.model.experts:
            return
        with self._lock:
            gate = self._loading.setdefault(resolved.key, threading.Lock())
        with gate:
            if resolved.key in self.model.experts:
                return
            module = self._build(served.store, served.manifest.experts[resolved.expert], resolved.key)

            def push():
                with self._lock:
                    self.model.push_expert(module)
                    self._used[resolved.key] = None
                    self._used.move_to_end(resolved.key)
                    self._pop_unused(keep=resolved.key)

            self.engine.run_exclusive(push).result()

    # -- requests ---------------------------------------------------------------------------------

    def resolve(self, model: str, prompt: str) -> Resolved:
        """`auto` asks the current version's gate; `backbone` bypasses the experts; else an expert by name."""
        served = self.current
        if model == BACKBONE:
            return Resolved(None, None, "requested: backbone", served.label)
        if model == AUTO:
            if served.router is None:
                return Resolved(None, None, "this version has no gate: backbone", served.label)
            decision = served.router.route(prompt, available=list(served.manifest.routable_experts()))
            key = served.keys[decision.expert] if decision.expert is not None else None
            return Resolved(decision.expert, key, decision.reason, served.label)
        if model not in served.manifest.routable_experts():
            raise UnknownModel(f"unknown model {model!r}; this server serves {served.model_names()}")
        return Resolved(model, served.keys[model], f"requested: {model}", served.label)

    def submit(self, model: str, prompt: str, prompt_ids: list[int], params: SamplingParams,
               emit: Callable[[Event], None]) -> tuple[Resolved, RequestHandle]:
        """Resolve, make the expert resident (this may load a blob: call it off the event loop), and queue
        the request; the last two under the lock, so the expert cannot be evicted or popped in between."""
        for _ in range(3):
            served = self.current
            resolved = self.resolve(model, prompt)
            cold = resolved.key is not None and resolved.key not in self.model.experts
            self._ensure_resident(resolved, served)
            with self._lock:
                if resolved.key is None or resolved.key in self.model.experts:
                    if resolved.key is not None:
                        self._used[resolved.key] = None
                        self._used.move_to_end(resolved.key)
                        self.hits += not cold
                    return resolved, self.engine.submit(prompt_ids, resolved.key, params, emit)
        raise RuntimeError(f"expert {resolved.expert!r} was evicted three times before its request could be queued; "
                           "raise max_resident")

    def plan(self, query: str):
        """Expert planning for one query (`ccoe.planning.plan_and_run` on the current version), run in the
        batcher's loop thread: the planner and each step's expert generate while the running batch waits
        (a plan holds the model for its whole run). Needs every expert resident (no `max_resident`).
        Returns (PlanResult, version label)."""
        from ccoe.planning import plan_and_run

        if PLAN not in self.current.model_names():
            raise UnknownModel(f"unknown model 'plan': {self.current.label} has no planner expert; it serves {self.current.model_names()}")
        if self.max_resident is not None:
            raise ValueError("model 'plan' needs every expert resident: start the server without max_resident")

        def run():
            served = self.current
            result = plan_and_run(self.model, self.tokenizer, served.manifest, served.router, [query], keys=served.keys)[0]
            return result, served.label

        return self.engine.run_exclusive(run).result()

    # -- following the alias ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Read the source; when its version or experts changed, swap it in. True when swapped."""
        manifest, version = self.source.read()
        if version == self.current.version and manifest == self.current.manifest:
            self.engine.run_exclusive(self._sweep).result()
            return False
        modules, served = self._prepare(manifest, version)

        self.engine.run_exclusive(lambda: self._switch(modules, served)).result()
        return True

    def _switch(self, modules: list, served: ServedVersion) -> None:
        """Push the new blobs, serve the new version, pop what nothing uses any more (loop thread)."""
        with self._lock:
            for module in modules:
                self.model.push_expert(module)
            self.current = served
            self.swaps += 1
            self._pop_unused()

    def _sweep(self) -> list[str]:
        """Pop resident experts that the current version and the requests in flight do not use (loop thread)."""
        with self._lock:
            return self._pop_unused()

    def _pop_unused(self, keep: str | None = None) -> list[str]:
        """Pop experts of earlier versions that no request uses; then, over `max_resident`, the least
        recently used unpinned ones that no request uses and that are not `keep` (loop thread, under the lock)."""
        busy = self.engine.in_use() | {keep}
        current = set(self.current.keys.values())
        pinned = {self.current.keys[name] for name in self.pin if name in self.current.keys}
        gone = [key for key in self.model.expert_names() if key not in current and key not in busy]
        if self.max_resident is not None:
            over = len(self.model.experts) - len(gone) - self.max_resident
            order = [k for k in self.model.expert_names() if k not in self._used] + list(self._used)  # never used first
            for key in order:
                if over <= 0:
                    break
                if key in current and key not in busy and key not in pinned and key not in gone:
                    gone.append(key)
                    self.evictions += 1
                    over -= 1
        for key in gone:
            self.model.pop_expert(key)
            self._used.pop(key, None)
        return gone

    def follow(self, interval_s: float, stop: threading.Event, log: Callable[[str], None] = print) -> None:
        """Poll the source every `interval_s` until `stop`; a failed read or load keeps the current version."""
        while not stop.wait(interval_s):
            try:
                before = self.current.label
                if self.refresh():
                    log(f"swapped {before} -> {self.current.label}: {self.loads} blob loads, {self.reused} reused so far")
                self.last_error = None
            except Exception as err:  # the server keeps answering with the version it has
                self.last_error = f"{type(err).__name__}: {err}"
                log(f"could not refresh {self.source.ref}: {self.last_error}; still serving {self.current.label}")
