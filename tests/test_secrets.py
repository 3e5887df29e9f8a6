"""Credentials in a tracking URI never reach a spec, a log, a run param or a saved file.

They move into MLFLOW_TRACKING_USERNAME/PASSWORD (where MLflow's client reads them, and which child
training processes inherit); every spec holds the URI without them.
"""

import os

import pytest

from ccoe.config import (
    BackboneSpec, DataSpec, ExpertJobSpec, ExpertSpec, LayerSelection, RegistrySpec, TrackingSpec, load_pipeline, redact_uri,
)
from lightning_modules.tracking import job_params

URI = "http://alice:s3cr3t%21@127.0.0.1:5000/"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("make", [lambda: TrackingSpec(tracking_uri=URI), lambda: RegistrySpec(tracking={"tracking_uri": URI})])
def test_credentials_move_from_the_uri_into_the_environment(make):
    spec = make()
    assert "http://127.0.0.1:5000/" in spec.to_yaml()
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "s3cr3t!")
    assert "s3cr3t" not in spec.to_yaml() and "alice" not in spec.model_dump_json()


def test_a_training_job_logs_and_saves_no_credentials():
    job = ExpertJobSpec(
        backbone=BackboneSpec(source="config", config={"model_type": "llama"}),
        expert=ExpertSpec(name="law", domain="law", layers=LayerSelection(strategy="top", k=1)),
        data=DataSpec(records=[{"prompt": "p", "response": "r"}]),
        tracking={"tracking_uri": URI},
    )
    assert "s3cr3t" not in str(job_params(job)) and "s3cr3t" not in job.to_yaml()
    assert "http://127.0.0.1:5000/" in str(job_params(job)["tracking"])


def test_credentials_that_contradict_the_environment_are_an_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "other")
    with pytest.raises(ValueError, match="differ from \\$MLFLOW_TRACKING_PASSWORD") as err:
        TrackingSpec(tracking_uri=URI)
    assert "s3cr3t" not in str(err.value) and "other" not in str(err.value)


def test_service_variables_with_credentials_are_stripped_too(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("backbone: {source: config, config: {model_type: llama}}\nexperts: []\n")
    spec = load_pipeline(config, env={"CCOE_TRACKING_URI": URI})
    assert spec.tracking.tracking_uri == spec.registry.tracking.tracking_uri == "http://127.0.0.1:5000/"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cr3t!" and "s3cr3t" not in spec.to_yaml()


@pytest.mark.parametrize("uri, shown", [
    ("http://u:p@[::1]:5000/x?y=1", "http://[::1]:5000/x?y=1"),
    ("https://token@mlflow.example/", "https://mlflow.example/"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("databricks", "databricks"),
])
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown
