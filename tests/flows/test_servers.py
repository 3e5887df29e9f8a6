"""The pipeline against real servers on 127.0.0.1: a Prefect server with a process worker (the UI's
"Run" path), and an MLflow tracking server with S3 (SeaweedFS) artifacts and blobs."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from ccoe import registry
from ccoe.config import PipelineSpec, load_yaml
from tests.flows.conftest import tiny_config
from tests.processes import free_port, start, stop, wait_http
from tests.s3_server import ACCESS_KEY, BUCKET, SECRET_KEY, _client

BIN = Path(sys.executable).parent


def test_retrain_expert_triggered_like_the_ui_runs_on_a_worker(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config = tiny_config(tmp_path)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true"}
    server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "server.log")
    worker = None
    try:
        wait_http(f"{api}/health", server, tmp_path / "server.log")
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", "ccoe-test", "--type", "process"], env=env, check=True, capture_output=True)
        with temporary_settings({PREFECT_API_URL: api}):
            from flows.deploy import deploy_to_pool

            ids = deploy_to_pool("ccoe-test", str(config), cron=None)
            assert set(ids) == {"train-expert", "retrain-expert", "pipeline"}
            worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "ccoe-test"], env, tmp_path / "worker.log")
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment(ids["retrain-expert"])
                schema = deployment.parameter_openapi_schema["properties"]
                assert {"expert", "config", "data_source", "overrides"} <= set(schema)  # the UI renders a form from this
                run = client.create_flow_run_from_deployment(deployment.id, parameters={"expert": "math", "overrides": {"max_steps": 2}})
                deadline = time.monotonic() + 420
                while not (state := client.read_flow_run(run.id).state).is_final():
                    assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-4000:]
                    time.sleep(2)
                assert state.is_completed(), (tmp_path / "worker.log").read_text()[-4000:]
        spec = load_yaml(PipelineSpec, config)
        version = registry.client(spec.registry).get_model_version(spec.registry.model_name, "1")
        assert version.tags["ccoe.pushed"] == "math" and version.tags["ccoe.gate"] == "promoted"
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


def test_pipeline_with_an_mlflow_server_and_s3(tmp_path, s3_server, prefect_harness):
    from flows.pipeline import pipeline

    port = free_port()
    prefix = uuid.uuid4().hex[:8]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_S3_ENDPOINT_URL": s3_server,
           "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    server = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                     "--artifacts-destination", f"s3://{BUCKET}/{prefix}/mlflow", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                    env, tmp_path / "mlflow.log")
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(f"{uri}/health", server, tmp_path / "mlflow.log")
        data = yaml.safe_load(tiny_config(tmp_path).read_text())
        data["experts"] = data["experts"][:2]
        data["tracking"] = {"tracking_uri": uri, "experiment": "ccoe-experts"}
        data["registry"] = {k: v for k, v in data["registry"].items() if k != "tracking"}  # inherits the server above
        data["storage"] = {"uri": f"s3://{BUCKET}/{prefix}/blobs", "endpoint_url": s3_server, "region": "us-east-1"}
        config = tmp_path / "remote.yaml"
        config.write_text(yaml.safe_dump(data))
        summary = pipeline(str(config))
        assert sorted(summary["trained"]) == ["math", "sql"] and summary["version"] == 1

        spec = load_yaml(PipelineSpec, config)
        mlc = registry.client(spec.registry)
        assert summary["promote"] is True and mlc.get_model_version(spec.registry.model_name, "1").tags["ccoe.gate"] == "promoted"
        experiment = mlc.get_experiment_by_name("ccoe-experts")
        assert {r.info.run_id for r in mlc.search_runs([experiment.experiment_id])} == set(summary["train_run_ids"])
        keys = [o["Key"] for o in _client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
        assert sum(k.startswith(f"{prefix}/blobs/blobs/") for k in keys) == 2
        assert any(k.startswith(f"{prefix}/mlflow/") and k.endswith("/config/job.yaml") for k in keys)  # run artifacts on S3
        assert not any(k.startswith(f"{prefix}/mlflow/") and k.endswith(".safetensors") for k in keys)  # one hop: blobs only in the store
    finally:
        stop(server)
