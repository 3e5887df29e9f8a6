"""MLflow for training jobs (the only MLflow code in lightning_modules).

Default store: `sqlite:///<root>/mlflow.db` with artifacts under `<root>/artifacts`, so nothing needs a
server; `tracking_uri` points the same code at an MLflow server. The URI comes from the job's config
only, never from `MLFLOW_TRACKING_URI`: MLflow sets that variable in-process when a client picks a
URI, so a later job (or a subprocess) would silently log into the previous job's store.
"""

from __future__ import annotations

from pathlib import Path

from lightning_fabric.utilities.rank_zero import rank_zero_only
from mlflow import MlflowClient
from pytorch_lightning.loggers import MLFlowLogger

from ccoe.config import ExpertJobSpec, mlflow_artifact_root, mlflow_store_uri
from ccoe.registry import experiment_id


def job_params(job: ExpertJobSpec) -> dict:
    """The whole job spec as params; in-memory records are summarised, never logged row by row."""
    data = job.model_dump(mode="json")
    if data["data"].get("records") is not None:
        data["data"]["records"] = f"<{len(data['data']['records'])} in-memory records>"
    return data


def make_logger(job: ExpertJobSpec, tags: dict[str, str]) -> MLFlowLogger:
    """The job's logger. The experiment is made first with a race-safe get-or-create: MLFlowLogger's
    own lookup-then-create fails when sibling jobs create the same experiment at the same moment."""
    uri = mlflow_store_uri(job.tracking.tracking_uri, job.tracking.root)
    artifacts = mlflow_artifact_root(job.tracking.tracking_uri, job.tracking.artifact_location, job.tracking.root)
    if rank_zero_only.rank == 0:
        experiment_id(MlflowClient(tracking_uri=uri), job.tracking.experiment, artifacts)
    return MLFlowLogger(
        experiment_name=job.tracking.experiment,
        run_name=f"expert-{job.expert.name}",
        tracking_uri=uri,
        artifact_location=artifacts,
        tags=tags,
        log_model=False,
    )


def log_files(logger: MLFlowLogger, files: dict[str, str | Path]) -> None:
    """Upload local files as run artifacts: {artifact folder: local path}."""
    for folder, path in files.items():
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=folder)
