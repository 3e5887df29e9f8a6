"""ccoe.registry (training runs): runs left RUNNING by dead processes are closed, and only those."""

import os
import socket

import psutil
from mlflow import MlflowClient

from ccoe.config import BackboneSpec, DataSpec, ExpertJobSpec, ExpertSpec, TrackingSpec
from ccoe.registry import fail_dead_runs, process_tags


def _job(tmp_path, expert="adder"):
    return ExpertJobSpec(
        backbone=BackboneSpec(source="config", config={"model_type": "llama"}),
        expert=ExpertSpec(name=expert, domain="math"),
        data=DataSpec(records=[{"prompt": "a", "response": "b"}]),
        tracking=TrackingSpec(root=str(tmp_path / "mlruns")),
    )


def test_only_runs_of_the_same_expert_owned_by_a_dead_process_on_this_host_are_failed(tmp_path):
    job = _job(tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.create_experiment(job.tracking.experiment)
    me = psutil.Process()
    alive = process_tags()
    dead = {**alive, "ccoe.pid_started": repr(me.create_time() - 3600)}  # this pid, but another (earlier) process
    owners = {
        "dead here": ("adder", dead),
        "dead here, finished": ("adder", dead),
        "alive here": ("adder", alive),
        "dead, other host": ("adder", {**dead, "ccoe.host": socket.gethostname() + "-elsewhere"}),
        "dead, other expert": ("subtractor", dead),
        "no owner tags": ("adder", {}),
    }
    runs = {}
    for name, (expert, tags) in owners.items():
        runs[name] = client.create_run(experiment, tags={"ccoe.expert": expert, **tags}).info.run_id
    client.set_terminated(runs["dead here, finished"], status="FINISHED")

    assert fail_dead_runs(job.tracking, job.expert.name) == [runs["dead here"]]
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {
        "dead here": "FAILED", "dead here, finished": "FINISHED", "alive here": "RUNNING",
        "dead, other host": "RUNNING", "dead, other expert": "RUNNING", "no owner tags": "RUNNING",
    }
    assert f"process {os.getpid()} on {socket.gethostname()} died" in client.get_run(runs["dead here"]).data.tags["ccoe.failure"]
    assert fail_dead_runs(job.tracking, job.expert.name) == []


def test_no_experiment_yet_is_nothing_to_fail(tmp_path):
    assert fail_dead_runs(_job(tmp_path).tracking, "adder") == []
