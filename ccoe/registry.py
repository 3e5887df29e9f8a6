"""MLflow for ccoe, in one module: the model registry of CCoE manifests, store URIs, experiment
get-or-create, run logging (evaluations, training runs and their clean-up) and the pyfunc. Nothing else
in ccoe, lightning_modules or flows imports mlflow, and nothing here sets MLflow's process-wide state:
every call goes through a client made for the spec at hand.

A registered model version holds one manifest (`ccoe.json`) inside an MLflow pyfunc model whose
code is `ccoe/pyfunc_entry.py` (models-from-code: no pickle). Expert blobs stay in the blob store the
manifest names; a version is registered only after every blob it references is verified present.
Aliases: `candidate` (the latest merge) and `champion` (promoted by the gated evaluation).

Racing merges. Each version is created with a `ccoe.parent` tag (the version its manifest was
merged from; 0 for none) and becomes visible to other merges only once tagged `ccoe.published`
(the commit point, set right after creation): a merge that crashed between creating a version and
publishing it leaves an orphan that no later merge builds on. MLflow numbers versions atomically, so
validity is decidable after the fact: a published version V is valid iff it is not tagged
`ccoe.status` = `superseded` or `rejected` and no valid version W has parent(V) < W < V. A merge
whose new version is invalid (someone else published on top of the same base in between, e.g. a
concurrent merge or a candidate still under evaluation) tags it `superseded`, re-applies its pops
and pushes on the newest valid version and registers again, up to `max_merge_retries` times: no
expert is lost. The gated evaluation tags a candidate it refuses `rejected`, so later merges from
the champion do not build on it.

Aliases only move forward (`advance_alias`). MLflow has no compare-and-swap on aliases, so a writer
first tags its version `ccoe.alias.<alias>` (a request), then sets the alias to the newest requested
version and re-reads it until it sees that value: whichever writer sets last has seen every request
made before its own check, so a slow writer can put back an older version only briefly, never finally.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import psutil
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ccoe.artifact import ExpertBlob, model_from_manifest, stage_blobs
from ccoe.config import RegistrySpec, RouterSpec, TrackingSpec, check_name
from ccoe.generation import generate_text
from ccoe.manifest import MANIFEST_NAME, ExpertEntry, LearnedRouterEntry, Manifest, blob_store_for, merge, verify_present
from ccoe.planning import plan_and_run
from ccoe.storage import BlobStore

ENTRY_FILE = Path(__file__).resolve().parent / "pyfunc_entry.py"
PARENT_TAG, STATUS_TAG, PUBLISHED_TAG = "ccoe.parent", "ccoe.status", "ccoe.published"
RETIRED = ("superseded", "rejected")
ALIAS_REQUEST_PREFIX = "ccoe.alias."
_ALIAS_ROUNDS = 20


def tracking_uri(spec: RegistrySpec) -> str:
    return spec.tracking.store_uri()


def client(spec: RegistrySpec) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri(spec), registry_uri=tracking_uri(spec))


def experiment_id(mlc: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Get or create the experiment `name`, safe against concurrent creators (parallel training jobs
    on a fresh server all try to create it; the losers read the winner's)."""
    experiment = mlc.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlc.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        experiment = mlc.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _experiment_id(spec: RegistrySpec, mlc: MlflowClient) -> str:
    return experiment_id(mlc, spec.tracking.experiment, spec.tracking.artifact_root())


# -- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredManifest:
    version: int
    manifest: Manifest
    aliases: tuple[str, ...]


def parse_uri(uri: str, spec: RegistrySpec) -> tuple[str, str]:
    """`models:/NAME@alias` or `models:/NAME/3` -> (name, alias-or-version)."""
    if not uri.startswith("models:/"):
        raise ValueError(f"not a registry URI: {uri!r} (expected models:/NAME@alias or models:/NAME/VERSION)")
    rest = uri.removeprefix("models:/")
    name, sep, ref = rest.partition("@") if "@" in rest else rest.partition("/")
    if not sep or not ref:
        raise ValueError(f"registry URI {uri!r} needs an alias (@champion) or a version (/3)")
    return name, ref


def get_version(spec: RegistrySpec, ref: str | int, name: str | None = None) -> RegisteredManifest | None:
    """A version by number or alias, with its manifest; None when the alias or model does not exist."""
    mlc, name = client(spec), name or spec.model_name
    try:
        mv = mlc.get_model_version(name, str(ref)) if str(ref).isdigit() else mlc.get_model_version_by_alias(name, str(ref))
    except MlflowException:
        return None
    # Resolve the version's files through this spec's client: a `models:/` URI would be resolved against
    # the process-wide registry URI, which need not be this registry.
    source = mlc.get_model_version_download_uri(name, mv.version).rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/artifacts/{MANIFEST_NAME}", dst_path=tmp, tracking_uri=tracking_uri(spec))
        manifest = Manifest.model_validate_json(Path(local).read_text())
    return RegisteredManifest(int(mv.version), manifest, tuple(mv.aliases))


def _versions(spec: RegistrySpec) -> list:
    try:
        found = client(spec).search_model_versions(f"name='{spec.model_name}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda mv: int(mv.version))


def valid_versions(spec: RegistrySpec) -> list[int]:
    """Published versions that no concurrent merge overtook (see the module docstring), ascending."""
    valid: list[int] = []
    for mv in _versions(spec):
        version, parent = int(mv.version), int(mv.tags.get(PARENT_TAG, "0"))
        published = mv.tags.get(PUBLISHED_TAG) == "true"
        if published and mv.tags.get(STATUS_TAG) not in RETIRED and not any(parent < w < version for w in valid):
            valid.append(version)
    return valid


def referenced_blobs(spec: RegistrySpec) -> set[str]:
    """sha256 of every expert blob that any version of the model references: every version counts,
    whatever its alias, status or publication, so garbage collection never breaks one. A version
    whose manifest cannot be read is an error (an incomplete answer could delete a live blob)."""
    try:  # not `_versions`: an unreachable or unauthorised registry must not look like one with no versions
        versions = client(spec).search_model_versions(f"name='{spec.model_name}'", max_results=200_000)
    except MlflowException as err:
        raise ValueError(f"cannot list the versions of {spec.model_name!r} at {tracking_uri(spec)}: {err}; nothing is collected") from None
    if not versions:
        raise ValueError(f"{spec.model_name!r} has no versions at {tracking_uri(spec)} (a typo in --model or --tracking-uri?); "
                           "nothing is collected")
    shas: set[str] = set()
    for mv in versions:
        found = get_version(spec, int(mv.version))
        if found is None:
            raise ValueError(f"version {mv.version} of {spec.model_name!r} could not be read; nothing is collected")
        shas.update(entry.sha256 for entry in found.manifest.blob_entries().values())
    return shas


def load(uri: str, spec: RegistrySpec, device: str = "cpu", dtype: str | None = None, use_cache: bool = True):
    """`models:/NAME@alias` -> (CCoEModel, RuleRouter | None, Manifest), every hash and fingerprint checked."""
    name, ref = parse_uri(uri, spec)
    found = get_version(spec, ref, name)
    if found is None:
        raise KeyError(f"{uri} does not exist in the registry at {tracking_uri(spec)}")
    model, router = model_from_manifest(found.manifest, blob_store_for(found.manifest, None), device, dtype, use_cache)
    return model, router, found.manifest


# -- writing ------------------------------------------------------------------------------------------


MODEL_DESCRIPTION = """A CCoE model (Collaboration of Experts, arXiv 2407.11686): one frozen backbone LLM plus
domain experts, each a few of the backbone's decoder layers fine-tuned on one domain.

Each version holds only a manifest (`ccoe.json`): the backbone's identity and every expert's layers
and sha256-addressed blob. Aliases: `candidate` is the latest merge, `champion` what the gated
evaluation promoted. A version's description lists its experts and, once evaluated, the gate's
decision with the per-domain scores. Serve it with `mlflow models serve -m models:/NAME@champion`:
rows of prompt (and optionally mode, expert, max_new_tokens) -> text, expert, reason, trace."""


INPUT_EXAMPLE = pd.DataFrame({"prompt": ["What is 12 + 30?", "Is the defendant liable for the injury?"],
                              "mode": ["route", "law"], "max_new_tokens": [16, 16]})


def pyfunc_signature():
    """The pyfunc's request and reply columns. Given explicitly: the predict type hints (DataFrames)
    cannot yield one, and inferring it from INPUT_EXAMPLE would load the backbone and every expert on
    each merge (`save_model` stores the example without running the model)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "mode", required=False), ColSpec("string", "expert", required=False),
                       ColSpec("long", "max_new_tokens", required=False)]),
        outputs=Schema([ColSpec("string", "text"), ColSpec("string", "expert"), ColSpec("string", "reason"), ColSpec("string", "trace")]),
    )


def version_description(manifest: Manifest, parent: int | None) -> str:
    """Markdown for the registry UI: the experts of a version, with their blobs, lineage and training runs."""
    lines = [f"Merged from version {parent or 'none (bare backbone)'}; backbone `{manifest.backbone.spec.source}` "
             f"(fingerprint `{manifest.backbone.fingerprint[:12]}…`).", "",
             "| expert | domain | layers | blob sha256 | continued from | shards seen | training run | data fingerprint |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in sorted(manifest.experts.items()):
        lines.append(f"| {name} | {e.domain} | {e.layers} | `{e.sha256[:12]}…` | "
                     f"{f'`{e.parent_sha256[:12]}…`' if e.parent_sha256 else 'backbone'} | {len(e.shards) or '-'} | {e.run_id or '-'} | "
                     f"{f'`{e.data_fingerprint[:12]}…`' if e.data_fingerprint else '-'} |")
    return "\n".join(lines)


def _register(spec: RegistrySpec, manifest: Manifest, tags: dict[str, str]) -> int:
    """Log the manifest as a pyfunc model in a run of the registry's experiment and register it.

    Everything goes through this spec's client (create the run, save the model locally, upload it,
    register from the run's artifact URI): MLflow's fluent API would need the process-wide tracking
    URI, which `mlflow.set_tracking_uri` also writes into MLFLOW_TRACKING_URI for every later client
    and child process."""
    mlc = client(spec)
    run = mlc.create_run(_experiment_id(spec, mlc), run_name=f"register-{spec.model_name}",
                         tags={k: v for k, v in tags.items() if k != PARENT_TAG})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MANIFEST_NAME
            path.write_text(manifest.to_json())
            mlflow.pyfunc.save_model(Path(tmp) / "ccoe", python_model=str(ENTRY_FILE), artifacts={"manifest": str(path)},
                                     pip_requirements=["ccoe"], signature=pyfunc_signature(), input_example=INPUT_EXAMPLE)
            mlc.log_artifacts(run.info.run_id, str(Path(tmp) / "ccoe"), "ccoe")
        _ensure_registered_model(mlc, spec.model_name)
        mv = mlc.create_model_version(spec.model_name, f"{run.info.artifact_uri}/ccoe", run_id=run.info.run_id, tags=tags,
                                      description=version_description(manifest, manifest.parent))
    except BaseException:
        mlc.set_terminated(run.info.run_id, status="FAILED")
        raise
    mlc.set_terminated(run.info.run_id)
    return int(mv.version)


def _ensure_registered_model(mlc: MlflowClient, name: str) -> None:
    try:
        mlc.get_registered_model(name)
    except MlflowException:
        try:
            mlc.create_registered_model(name, description=MODEL_DESCRIPTION)
        except MlflowException:  # created concurrently
            mlc.get_registered_model(name)


def append_description(spec: RegistrySpec, version: int, text: str) -> None:
    """Add a section (markdown) to a version's description, e.g. the gate's report."""
    mlc = client(spec)
    current = mlc.get_model_version(spec.model_name, str(version)).description or ""
    mlc.update_model_version(spec.model_name, str(version), description=f"{current}\n\n{text}".strip())


def _tags(manifest: Manifest, parent: int | None, pushed: Iterable[str], popped: Iterable[str]) -> dict[str, str]:
    tags = {
        PARENT_TAG: str(parent or 0),
        "ccoe.backbone_fingerprint": manifest.backbone.fingerprint,
        "ccoe.experts": ",".join(sorted(manifest.experts)),
        "ccoe.pushed": ",".join(sorted(pushed)),
        "ccoe.popped": ",".join(sorted(popped)),
    }
    for name, entry in manifest.experts.items():
        tags[f"ccoe.expert.{name}"] = json.dumps({"sha256": entry.sha256, "run_id": entry.run_id, "layers": entry.layers,
                                                  "parent_sha256": entry.parent_sha256, "shards": len(entry.shards)})
    return tags


@dataclass(frozen=True)
class MergeResult:
    version: int
    manifest: Manifest
    bytes_uploaded: int
    attempts: int


def merge_and_register(
    spec: RegistrySpec,
    store: BlobStore,
    *,
    bare: Manifest,
    blobs: Sequence[ExpertBlob] = (),
    entries: Mapping[str, ExpertEntry] | None = None,
    pops: Iterable[str] = (),
    router: RouterSpec | None = None,
    learned_router: LearnedRouterEntry | None = None,
    base_alias: str = "champion",
    alias: str = "candidate",
) -> MergeResult:
    """Pop-and-push experts into the registered model and register the result under `alias`.

    The base is the version at `base_alias`, else the newest valid version, else `bare` (the backbone
    with no experts). `blobs` are uploaded first (only missing ones); `entries` name experts whose blobs
    are already in `store` (put there by their training jobs). Every referenced blob is verified
    present by content, then the version is registered; racing merges are detected and retried on the
    new head. `learned_router`: an entry whose blob is already in `store` replaces the base's.
    """
    pops = [check_name(p) for p in pops]
    base = get_version(spec, base_alias) or _newest_valid(spec)
    unknown = [p for p in pops if p not in (base.manifest if base else bare).experts]
    if unknown:
        raise KeyError(f"cannot pop {unknown}: the base version has {sorted((base.manifest if base else bare).experts)}; nothing was written")
    _check_base(base.manifest if base else bare, bare, store)  # before any upload: a refused merge writes nothing
    given = dict(entries or {})
    foreign = sorted(n for n, e in given.items() if e.backbone_fingerprint != bare.backbone.fingerprint)
    if foreign:
        raise ValueError(f"experts {foreign} were trained on another backbone than {bare.backbone.fingerprint[:12]}…; nothing was written")
    before = store.bytes_written
    staged = stage_blobs(store, blobs, bare.backbone.fingerprint)
    repeated = sorted(set(staged) & set(given))
    if repeated:
        raise ValueError(f"experts {repeated} given both as blobs and as entries")
    pushes: dict[str, ExpertEntry] = {**staged, **given}
    for attempt in range(1, spec.max_merge_retries + 2):
        parent_manifest = base.manifest if base else bare
        _check_base(parent_manifest, bare, store)
        manifest = merge(parent_manifest, pushes, [p for p in pops if p in parent_manifest.experts],
                         router=router, parent=base.version if base else None, learned_router=learned_router)
        manifest = manifest.model_copy(update={"storage": manifest.storage or store.spec})
        verify_present(manifest, store, [e.sha256 for e in staged.values()] + ([learned_router.sha256] if learned_router else []))
        created = time.monotonic()
        version = _register(spec, manifest, _tags(manifest, base.version if base else None, pushes, pops))
        if time.monotonic() - created > spec.publish_timeout_s / 2:  # others may already take it for an orphan
            client(spec).set_model_version_tag(spec.model_name, str(version), STATUS_TAG, "superseded")
            base = _newest_valid(spec)
            continue
        client(spec).set_model_version_tag(spec.model_name, str(version), PUBLISHED_TAG, "true")
        _await_in_flight(spec, manifest.parent or 0, version, created)
        if version in valid_versions(spec):
            advance_alias(spec, alias, version)
            return MergeResult(version, manifest, store.bytes_written - before, attempt)
        client(spec).set_model_version_tag(spec.model_name, str(version), STATUS_TAG, "superseded")
        base = _newest_valid(spec)
    raise RuntimeError(
        f"merge into {spec.model_name!r} lost the race {spec.max_merge_retries + 1} times to concurrent merges; "
        "nothing was aliased; run it again"
    )


def _await_in_flight(spec: RegistrySpec, parent: int, version: int, created: float) -> None:
    """Wait until no version between `parent` and `version` is still in flight (created, unpublished,
    younger than `publish_timeout_s`). Why: validity is judged in creation order, so a version created
    before ours but published after our check would invalidate ours after we returned; waiting for it
    makes whichever of the two is checked last see both. An older unpublished version is an orphan (its
    merge publishes within half the timeout or not at all). Ages are measured on the registry's clock:
    our version's creation timestamp plus the time since `created` (monotonic, taken when our
    registration began, so ages come out high by at most the registration's few seconds)."""
    mlc = client(spec)
    own_created_ms = mlc.get_model_version(spec.model_name, str(version)).creation_timestamp
    while True:
        now_ms = own_created_ms + 1000 * (time.monotonic() - created)
        waiting = [mv for mv in _versions(spec) if parent < int(mv.version) < version and mv.tags.get(PUBLISHED_TAG) != "true"
                   and mv.tags.get(STATUS_TAG) not in RETIRED and now_ms - mv.creation_timestamp < 1000 * spec.publish_timeout_s]
        if not waiting:
            return
        time.sleep(0.25)


def _check_base(parent: Manifest, bare: Manifest, store: BlobStore) -> None:
    if parent.backbone.fingerprint != bare.backbone.fingerprint:
        raise ValueError(
            f"the registered model is built on backbone {parent.backbone.fingerprint[:12]}…, this merge on "
            f"{bare.backbone.fingerprint[:12]}…; use another model name (nothing was written)"
        )
    if parent.storage not in (None, store.spec):
        raise ValueError(f"the registered model keeps its blobs at {parent.storage.uri}, not {store.spec.uri} (nothing was written)")


def advance_alias(spec: RegistrySpec, alias: str, version: int) -> int:
    """Move `alias` forward to `version`, never backward; returns the version the alias ends on.

    See the module docstring: request first (a version tag), then set the newest requested version
    and re-read until the alias shows it. An alias already past every request (moved forward by hand)
    is left where it is.
    """
    check_name(alias, "alias")
    mlc = client(spec)
    mlc.set_model_version_tag(spec.model_name, str(version), f"{ALIAS_REQUEST_PREFIX}{alias}", "requested")
    for _ in range(_ALIAS_ROUNDS):
        target = max(int(mv.version) for mv in _versions(spec) if mv.tags.get(f"{ALIAS_REQUEST_PREFIX}{alias}") == "requested")
        current = get_alias_version(spec, alias)
        if current is not None and current >= target:
            return current
        set_alias(spec, alias, target)
    raise RuntimeError(f"alias {alias!r} of {spec.model_name!r} kept moving for {_ALIAS_ROUNDS} rounds; run again")


def get_alias_version(spec: RegistrySpec, alias: str) -> int | None:
    try:
        return int(client(spec).get_model_version_by_alias(spec.model_name, alias).version)
    except MlflowException:
        return None


def _newest_valid(spec: RegistrySpec) -> RegisteredManifest | None:
    valid = valid_versions(spec)
    return get_version(spec, valid[-1]) if valid else None


def set_alias(spec: RegistrySpec, alias: str, version: int) -> None:
    """Point `alias` at `version` unconditionally (a deliberate roll-back); pipelines use `advance_alias`."""
    client(spec).set_registered_model_alias(spec.model_name, alias, str(version))


def tag_version(spec: RegistrySpec, version: int, tags: Mapping[str, str]) -> None:
    mlc = client(spec)
    for key, value in tags.items():
        mlc.set_model_version_tag(spec.model_name, str(version), key, value)


def log_run(spec: RegistrySpec, run_name: str, *, params: Mapping[str, str] | None = None,
            metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None, files: Sequence[Path] = ()) -> str:
    """One MLflow run in the registry's experiment (used for evaluations); returns its id."""
    mlc = client(spec)
    run = mlc.create_run(_experiment_id(spec, mlc), run_name=run_name, tags=dict(tags or {}))
    for key, value in (params or {}).items():
        mlc.log_param(run.info.run_id, key, value)
    for key, value in (metrics or {}).items():
        mlc.log_metric(run.info.run_id, key, float(value))
    for path in files:
        mlc.log_artifact(run.info.run_id, str(path))
    mlc.set_terminated(run.info.run_id)
    return run.info.run_id


# -- training runs ------------------------------------------------------------------------------------
#
# A training job killed with SIGKILL (OOM killer, evicted pod, `kill -9`) cannot close its run, which
# would stay RUNNING forever. Every training run is tagged with the host, pid and start time of the
# process that owns it (`process_tags`), and `fail_dead_runs` marks FAILED the RUNNING runs of one
# expert whose owner process, recorded on this host, is gone. It never touches another expert's runs,
# a run owned by a live process, or a run recorded on another host (possibly alive there).

EXPERT, HOST, PID, PID_STARTED, FAILURE = "ccoe.expert", "ccoe.host", "ccoe.pid", "ccoe.pid_started", "ccoe.failure"


def training_store(tracking: TrackingSpec) -> tuple[str, str | None]:
    """(tracking URI, artifact root) of training runs, with the experiment made (race-safe get-or-create:
    sibling jobs on a fresh server create it at the same moment)."""
    uri, artifacts = tracking.store_uri(), tracking.artifact_root()
    experiment_id(MlflowClient(tracking_uri=uri), tracking.experiment, artifacts)
    return uri, artifacts


def process_tags() -> dict[str, str]:
    """The owner of a run: host, pid, and the process's start time (so a reused pid is not taken for it)."""
    me = psutil.Process()
    return {HOST: socket.gethostname(), PID: str(me.pid), PID_STARTED: repr(me.create_time())}


def _process_alive(pid: int, started: float) -> bool:
    """Whether process `pid`, started at `started` (epoch seconds), still runs. A zombie (killed, not
    yet reaped) is dead; a pid now held by a process started at another time is a different process."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def fail_dead_runs(tracking: TrackingSpec, expert: str) -> list[str]:
    """Mark FAILED the RUNNING training runs of `expert` whose owner process, recorded on this host, is dead.

    Returns the run ids marked. Runs without owner tags (older code) are left alone: nothing proves them dead.
    """
    client = MlflowClient(tracking_uri=tracking.store_uri())
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        return []
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{EXPERT}` = '{expert}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    marked = []
    for run in runs:
        tags = run.data.tags
        if tags.get(HOST) != host or PID not in tags or PID_STARTED not in tags:
            continue
        if _process_alive(int(tags[PID]), float(tags[PID_STARTED])):
            continue
        client.set_tag(run.info.run_id, FAILURE, f"process {tags[PID]} on {host} died without closing the run (killed?)")
        client.set_terminated(run.info.run_id, status="FAILED")
        marked.append(run.info.run_id)
    return marked


# -- serving ------------------------------------------------------------------------------------------


class CCoEPyfunc(mlflow.pyfunc.PythonModel):
    """`mlflow models serve` entry: rows of {prompt, mode?, expert?, max_new_tokens?} -> {text, expert, reason, trace}.

    The manifest is the only model artifact; the backbone and blobs are fetched (and verified) at
    load. `mode` per row: "route" (default: the gate decides), "plan" (expert planning: the planner's
    steps, each with its expert; needs a planner expert; step budgets are the planner's, not
    max_new_tokens), an expert's name, or "backbone" (no expert). The older `expert` column means the
    same as a mode naming an expert or "backbone". `trace` is JSON: the decision, or the plan and
    every step's prompt, completion and answer.
    """

    def load_context(self, context):
        self.manifest = Manifest.model_validate_json(Path(context.artifacts["manifest"]).read_text())
        self.model, self.router = model_from_manifest(self.manifest, blob_store_for(self.manifest, None))

    def _route(self, prompt: str, requested: str) -> tuple[str | None, str]:
        if requested == "backbone":
            return None, "requested: backbone"
        if requested != "route":
            if requested not in self.model.experts:
                raise ValueError(f"unknown mode or expert {requested!r}; use route, plan, backbone or one of {sorted(self.model.experts)}")
            return requested, f"requested: {requested}"
        if self.router is None:
            return None, "no router in this model: backbone"
        decision = self.router.route(prompt, available=list(self.manifest.routable_experts()))
        return decision.expert, decision.reason

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in frame.columns:
            raise ValueError("input needs a 'prompt' column (optional: 'mode', 'expert', 'max_new_tokens')")
        given = lambda column: [None if pd.isna(v) or v == "" else str(v) for v in frame[column]] if column in frame.columns else [None] * len(frame)
        modes = [mode or expert or "route" for mode, expert in zip(given("mode"), given("expert"))]
        prompts = [str(p) for p in frame["prompt"]]
        out = [None] * len(frame)
        planned = [row for row, mode in enumerate(modes) if mode == "plan"]
        results = plan_and_run(self.model, self.model.backbone.tokenizer, self.manifest, self.router, [prompts[r] for r in planned]) if planned else []
        for row, result in zip(planned, results):
            reason = result.plan.fallback or f"plan of {len(result.plan.steps)} step(s)"
            out[row] = (result.text, ">".join(s.expert or "backbone" for s in result.plan.steps), reason, json.dumps(result.as_dict()))
        direct = [row for row, mode in enumerate(modes) if mode != "plan"]
        routes = {row: self._route(prompts[row], modes[row]) for row in direct}
        budget = int(frame["max_new_tokens"].max()) if "max_new_tokens" in frame.columns else int((params or {}).get("max_new_tokens", 64))
        if direct:
            completions = generate_text(self.model, self.model.backbone.tokenizer, [prompts[r] for r in direct], [routes[r][0] for r in direct],
                                        max_new_tokens=budget)
            for row, completion in zip(direct, completions):
                expert, reason = routes[row]
                out[row] = (completion.text, expert or "backbone", reason, json.dumps({"mode": modes[row], "expert": expert, "reason": reason}))
        return pd.DataFrame(out, columns=["text", "expert", "reason", "trace"])


def set_pyfunc_model() -> None:
    mlflow.models.set_model(CCoEPyfunc())
