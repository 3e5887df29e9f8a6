"""Prefect: fan out one training job per expert (thin shell over `lightning_modules.train`).

Locally each job is a task running the job in its own process; in production (`PipelineSpec.deployment`)
each job is a run of the `train-expert` deployment on a work pool, so every expert is its own flow run
on its own GPU node. A failed expert does not stop the others: it is reported with its error.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.deployments import run_deployment
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from ccoe.config import ExpertJobSpec, PipelineSpec
from ccoe.manifest import TrainedExpert
from lightning_modules.train import train_expert


@dataclass(frozen=True)
class TrainingRound:
    """The outcome of `train_experts`: what trained, and the error of every job that did not."""

    results: tuple[TrainedExpert, ...]
    failures: dict[str, str]


@task(task_run_name="train-{job.expert.name}")
def train_job(job: ExpertJobSpec) -> TrainedExpert:
    """One expert, trained in a child process whose progress lines go to this task's log."""
    return train_expert(job, isolated=True, progress=get_run_logger().info)


@task(task_run_name="train-{job.expert.name}-on-{deployment}")
def train_job_remote(job: ExpertJobSpec, deployment: str, gpu_job_variable: str | None = None) -> TrainedExpert:
    """One expert as a run of `deployment`; with `gpu_job_variable` the run asks for `training.devices` GPUs.
    The run's JSON result is validated into a TrainedExpert here (result storage is untrusted input)."""
    job_variables = {gpu_job_variable: job.training.devices} if gpu_job_variable else None
    run = run_deployment(deployment, parameters={"job": job.model_dump(mode="json")}, job_variables=job_variables, timeout=None)
    if not run.state.is_completed():
        raise RuntimeError(f"deployment run {run.name} for expert {job.expert.name!r} ended {run.state.type.value}: {run.state.message}")
    return TrainedExpert.model_validate(run.state.result())


@flow(name="train-expert", persist_result=True, result_serializer="json")
def train_expert_flow(job: ExpertJobSpec) -> dict:
    """The `train-expert` deployment: one expert job in this flow run's process.

    Its result is persisted (the parent reads it back through `run_deployment`) as JSON, never with
    Prefect's default pickle serializer: result storage is shared, so a result is untrusted input. The
    job runs in a child process, so when the OOM killer takes it, this flow run marks its MLflow run
    FAILED and fails with the reason instead of dying with it."""
    return train_expert(job, isolated=True, progress=get_run_logger().info).model_dump(mode="json")


@flow(name="train-experts")
def train_experts(spec: PipelineSpec, jobs: list[ExpertJobSpec]) -> TrainingRound:
    """Train `jobs` concurrently (up to `spec.slots`): the trained experts and, by name, the jobs that failed."""
    logger = get_run_logger()
    if spec.deployment:
        futures = {j.expert.name: train_job_remote.with_options(retries=spec.retries).submit(j, spec.deployment, spec.gpu_job_variable) for j in jobs}
    else:
        futures = {j.expert.name: train_job.with_options(retries=spec.retries, retry_delay_seconds=2).submit(j) for j in jobs}
    wait(list(futures.values()))
    results, failures = [], {}
    for name, future in futures.items():
        if future.state.is_completed():
            results.append(future.result())
            logger.info("expert %s trained in %.0f s: blob %s", name, results[-1].seconds, results[-1].entry.sha256[:12])
        else:
            failures[name] = str(future.state.message or future.state.type.value)[-1500:]
            logger.error("expert %s failed: %s", name, failures[name])
    return TrainingRound(tuple(results), failures)


def with_slots(spec: PipelineSpec):
    """`train_experts` with a thread pool of `spec.slots` workers (the slots are processes' parents)."""
    return train_experts.with_options(task_runner=ThreadPoolTaskRunner(max_workers=spec.slots))
