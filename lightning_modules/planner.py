"""Train the planner expert of an artifact (`ccoe planner train` calls this).

The planner is an ordinary layer expert of the artifact's backbone (domain `planning`), trained by the
same Lightning job as a domain expert, on pairs built by `ccoe.domains.composed.planner_training_rows`
for the artifact's routable experts. Its blob goes into the artifact's blob store and the manifest
gains (or replaces) it by pop-and-push: the other experts' entries are untouched.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccoe.artifact import ExpertBlob, stage_blobs
from ccoe.config import DataSpec, ExpertJobSpec, ExpertSpec, PlannerSpec, TrackingSpec
from ccoe.domains.composed import planner_training_rows
from ccoe.manifest import PLANNER_DOMAIN, ExpertEntry, Manifest, blob_store_for, merge, read_manifest, verify_present, write_manifest
from ccoe.storage import BlobStore
from lightning_modules.train import train_expert


@dataclass(frozen=True)
class PlannerTraining:
    """The manifest written, the planner's entry, its training pairs (composed / one-step) and wall seconds."""

    manifest: Manifest
    entry: ExpertEntry
    composed_rows: int
    single_rows: int
    seconds: float


def train_planner(
    artifact: str,
    spec: PlannerSpec,
    given: Mapping[str, Sequence[str]] | None = None,
    tracking: TrackingSpec | None = None,
    progress: Callable[[str], None] = print,
) -> PlannerTraining:
    """Train `spec.name` on the artifact's backbone for its routable experts and push it into the manifest."""
    manifest = read_manifest(artifact)
    experts = manifest.routable_experts()
    if not experts:
        raise ValueError("the artifact has no experts to plan for")
    if spec.name in experts:
        raise ValueError(f"{spec.name!r} is already a domain expert of this artifact; name the planner otherwise (PlannerSpec.name)")
    rows = planner_training_rows([e.domain for e in experts.values()], spec, given)
    composed = sum(1 for row in rows if len(json.loads(row["response"])["steps"]) > 1)
    progress(f"planner data: {len(rows)} pairs ({composed} composed, {len(rows) - composed} one-step)")
    with tempfile.TemporaryDirectory(prefix="ccoe-planner-") as tmp:
        data_file = Path(tmp) / "planner.jsonl"
        data_file.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        job = ExpertJobSpec(
            backbone=manifest.backbone.spec, expert=ExpertSpec(name=spec.name, domain=PLANNER_DOMAIN, layers=spec.layers),
            data=DataSpec(source=str(data_file), max_length=spec.max_length), training=spec.training,
            tracking=tracking or TrackingSpec(), output_dir=str(Path(tmp) / "out"),
        )
        trained = train_expert(job, progress=progress)
        blob = ExpertBlob(Path(trained.blob_path).read_bytes(), trained.entry.run_id, trained.entry.data_fingerprint, trained.entry.metrics)
        store = blob_store_for(manifest, artifact)
        entries = stage_blobs(store, [blob], manifest.backbone.fingerprint)
    updated = merge(manifest, pushes=entries, parent=manifest.parent)
    verify_present(updated, store, [e.sha256 for e in entries.values()])
    write_manifest(BlobStore(artifact), updated)
    return PlannerTraining(updated, entries[spec.name], composed, len(rows) - composed, trained.seconds)
