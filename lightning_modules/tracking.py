"""The Lightning side of training-run tracking: the job's params and its MLFlowLogger.

The MLflow store, the experiment, owner tags and the clean-up of runs left RUNNING by killed jobs
live in `ccoe.registry` (the one module that talks to MLflow). Default store: `sqlite:///<root>/mlflow.db`
with artifacts under `<root>/artifacts`, so nothing needs a server; `tracking_uri` points the same
code at an MLflow server. The URI comes from the job's config only, never from `MLFLOW_TRACKING_URI`.
"""

from __future__ import annotations

from pathlib import Path

from lightning_fabric.utilities.rank_zero import rank_zero_only
from pytorch_lightning.loggers import MLFlowLogger

from ccoe import registry
from ccoe.config import ExpertJobSpec


def job_params(job: ExpertJobSpec) -> dict:
    """The whole job spec as params; in-memory records are summarised, never logged row by row."""
    data = job.model_dump(mode="json")
    if data["data"].get("records") is not None:
        data["data"]["records"] = f"<{len(data['data']['records'])} in-memory records>"
    return data


def make_logger(job: ExpertJobSpec, tags: dict[str, str]) -> MLFlowLogger:
    """The job's logger. The experiment is made first (MLFlowLogger's own lookup-then-create races with
    sibling jobs); on rank 0 dead runs of the same expert are closed (`registry.fail_dead_runs`).
    The run is created with the owner tags (`registry.process_tags`), so no live run lacks them."""
    uri, artifacts = registry.training_store(job.tracking)
    if rank_zero_only.rank == 0:
        registry.fail_dead_runs(job.tracking, job.expert.name)
    return MLFlowLogger(
        experiment_name=job.tracking.experiment,
        run_name=f"expert-{job.expert.name}",
        tracking_uri=uri,
        artifact_location=artifacts,
        tags={**tags, registry.EXPERT: job.expert.name, **registry.process_tags()},
        log_model=False,
    )


def log_files(logger: MLFlowLogger, files: dict[str, str | Path]) -> None:
    """Upload local files as run artifacts: {artifact folder: local path}."""
    for folder, path in files.items():
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=folder)
