"""MLflow for training jobs (the only MLflow code in lightning_modules).

Default store: `sqlite:///<root>/mlflow.db` with artifacts under `<root>/artifacts`, so nothing needs a
server; `tracking_uri` points the same code at an MLflow server. The URI comes from the job's config
only, never from `MLFLOW_TRACKING_URI`: MLflow sets that variable in-process when a client picks a
URI, so a later job (or a subprocess) would silently log into the previous job's store.

A job killed with SIGKILL (OOM killer, evicted pod, `kill -9`) cannot close its run, which would stay
RUNNING forever. Every run is tagged with the host, pid and start time of the process that owns it, and
`fail_dead_runs` marks FAILED the RUNNING runs of one expert whose owner process, recorded on this host,
is gone. It runs when a job of that expert starts (covers any earlier kill on this host) and in the
parent of an isolated job as soon as its child dies (covers the child's own run at once). It never
touches another expert's runs, a run owned by a live process, or a run recorded on another host
(possibly alive there: this machine cannot tell).
"""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
from lightning_fabric.utilities.rank_zero import rank_zero_only
from mlflow import MlflowClient
from pytorch_lightning.loggers import MLFlowLogger

from ccoe.config import ExpertJobSpec, mlflow_artifact_root, mlflow_store_uri
from ccoe.registry import experiment_id

EXPERT, HOST, PID, PID_STARTED, FAILURE = "ccoe.expert", "ccoe.host", "ccoe.pid", "ccoe.pid_started", "ccoe.failure"


def job_params(job: ExpertJobSpec) -> dict:
    """The whole job spec as params; in-memory records are summarised, never logged row by row."""
    data = job.model_dump(mode="json")
    if data["data"].get("records") is not None:
        data["data"]["records"] = f"<{len(data['data']['records'])} in-memory records>"
    return data


def _client(job: ExpertJobSpec) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_store_uri(job.tracking.tracking_uri, job.tracking.root))


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


def fail_dead_runs(job: ExpertJobSpec) -> list[str]:
    """Mark FAILED the RUNNING runs of `job`'s expert whose owner process, recorded on this host, is dead.

    Returns the run ids marked. Runs without owner tags (older code) are left alone: nothing proves them dead.
    """
    client = _client(job)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    if experiment is None:
        return []
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{EXPERT}` = '{job.expert.name}' and attributes.status = 'RUNNING'",
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


def make_logger(job: ExpertJobSpec, tags: dict[str, str]) -> MLFlowLogger:
    """The job's logger; on rank 0 first closes dead runs of the same expert (`fail_dead_runs`).

    The experiment is made first with a race-safe get-or-create: MLFlowLogger's own lookup-then-create
    fails when sibling jobs create the same experiment at the same moment. The run is created with the
    owner tags (`process_tags`) in the same call, so no live run ever lacks them.
    """
    uri = mlflow_store_uri(job.tracking.tracking_uri, job.tracking.root)
    artifacts = mlflow_artifact_root(job.tracking.tracking_uri, job.tracking.artifact_location, job.tracking.root)
    if rank_zero_only.rank == 0:
        experiment_id(MlflowClient(tracking_uri=uri), job.tracking.experiment, artifacts)
        fail_dead_runs(job)
    return MLFlowLogger(
        experiment_name=job.tracking.experiment,
        run_name=f"expert-{job.expert.name}",
        tracking_uri=uri,
        artifact_location=artifacts,
        tags={**tags, EXPERT: job.expert.name, **process_tags()},
        log_model=False,
    )


def log_files(logger: MLFlowLogger, files: dict[str, str | Path]) -> None:
    """Upload local files as run artifacts: {artifact folder: local path}."""
    for folder, path in files.items():
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=folder)
