"""MLflow for training jobs (the only MLflow code in lightning_modules).

Default store: `sqlite:///<root>/mlflow.db` with artifacts under `<root>/artifacts`, so nothing needs a
server; `tracking_uri` points the same code at an MLflow server. The URI comes from the job's config
only, never from `MLFLOW_TRACKING_URI`: MLflow sets that variable in-process when a client picks a
URI, so a later job (or a subprocess) would silently log into the previous job's store.
"""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.loggers import MLFlowLogger

from ccoe.config import ExpertJobSpec, TrackingSpec


def tracking_uri(spec: TrackingSpec) -> str:
    if spec.tracking_uri:
        return spec.tracking_uri
    root = Path(spec.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root}/mlflow.db"


def artifact_location(spec: TrackingSpec) -> str | None:
    if spec.artifact_location:
        return spec.artifact_location
    if spec.tracking_uri:
        return None  # the server decides
    return (Path(spec.root).resolve() / "artifacts").as_uri()


def job_params(job: ExpertJobSpec) -> dict:
    """The whole job spec as params; in-memory records are summarised, never logged row by row."""
    data = job.model_dump(mode="json")
    if data["data"].get("records") is not None:
        data["data"]["records"] = f"<{len(data['data']['records'])} in-memory records>"
    return data


def make_logger(job: ExpertJobSpec, tags: dict[str, str]) -> MLFlowLogger:
    return MLFlowLogger(
        experiment_name=job.tracking.experiment,
        run_name=f"expert-{job.expert.name}",
        tracking_uri=tracking_uri(job.tracking),
        artifact_location=artifact_location(job.tracking),
        tags=tags,
        log_model=False,
    )


def log_files(logger: MLFlowLogger, files: dict[str, str | Path]) -> None:
    """Upload local files as run artifacts: {artifact folder: local path}."""
    for folder, path in files.items():
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=folder)
