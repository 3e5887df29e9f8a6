"""infra/local: `make stack-up`, a tiny pipeline through `make demo` against the stack, `make stack-down`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import pytest
import yaml
from botocore.config import Config
from pydantic import ValidationError

from ccoe.config import SERVICE_ENV
from infra.local.stack import SERVICE_NAMES, PidFile, StackPorts, StackSpec, _alive, process_tree
from tests.flows.conftest import tiny_config
from tests.s3_server import free_stack_ports

REPO = Path(__file__).resolve().parents[2]


def _make(target: str, *variables: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV and k != "PREFECT_API_URL"}
    done = subprocess.run(["make", "--no-print-directory", target, *variables], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0 or target == "stack-status", f"make {target} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def _stack_config(tmp_path: Path) -> tuple[Path, StackSpec]:
    ports = free_stack_ports().model_dump()
    (tmp_path / "pipeline").mkdir()
    data = {"state_dir": str(tmp_path / "stack"), "ports": ports, "bucket": "ccoe-stack",
            "deploy_config": str(tiny_config(tmp_path / "pipeline")), "start_timeout_s": 240}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, StackSpec.model_validate(data)


def _pids(spec: StackSpec) -> dict[str, int]:
    return {s: PidFile(spec.root / "run" / f"{s}.pid").running_pid() for s in SERVICE_NAMES}


@pytest.mark.slow
def test_stack_up_runs_the_pipeline_on_real_services_and_stack_down_leaves_nothing(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config, spec = _stack_config(tmp_path)
    pipeline_config = spec.deploy_config
    variables = (f"STACK_CONFIG={config}",)
    try:
        _make("stack-up", *variables)
        first = _pids(spec)
        assert all(first.values()), first
        again = _make("stack-up", *variables)
        assert again.stdout.count("already running") == 4 and _pids(spec) == first  # twice is harmless
        assert "healthy" in _make("stack-status", *variables).stdout

        demo = _make("demo", *variables, f"DEMO_CONFIG={pipeline_config}")
        assert "using the local stack" in demo.stdout and "Gate decision for version 1" in demo.stdout

        env = dict(line.split("=", 1) for line in (spec.root / "stack.env").read_text().splitlines() if "=" in line and not line.startswith("#"))
        s3 = boto3.client("s3", endpoint_url=env["CCOE_S3_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], config=Config(s3={"addressing_style": "path"}))
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ccoe-stack")["Contents"]]
        assert sum(k.startswith("blobs/blobs/") and k.endswith(".safetensors") for k in keys) == 3
        assert any(k.startswith("mlflow/") for k in keys)  # MLflow's run artifacts went to the same S3

        mlc = mlflow.MlflowClient(tracking_uri=env["CCOE_TRACKING_URI"], registry_uri=env["CCOE_TRACKING_URI"])
        runs = mlc.search_runs([mlc.get_experiment_by_name("ccoe-experts").experiment_id])
        assert sorted(r.data.tags["ccoe.expert"] for r in runs) == ["law", "math", "sql"]
        assert mlc.get_model_version("ccoe_tiny", "1").tags["ccoe.gate"] == "promoted"  # the tiny gate: not worse than the base

        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
            flow_runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])))
            assert [r.state.type.value for r in flow_runs] == ["COMPLETED"]
            assert {d.name for d in client.read_deployments()} == {"train-expert", "retrain-expert", "pipeline"}

        processes = [pid for pid in first.values() for pid in process_tree(pid)]
    finally:
        _make("stack-down", *variables)
    assert _alive(processes) == [], "processes left behind after stack-down"
    assert not any((spec.root / "run").iterdir()) and not (spec.root / "stack.env").exists()
    after = _make("stack-status", *variables)
    assert after.returncode != 0 and after.stdout.count(" down ") == 4


def test_ports_must_be_distinct_and_unprivileged():
    with pytest.raises(ValidationError, match="used twice: \\[5000\\]"):
        StackPorts(prefect=5000)
    with pytest.raises(ValidationError, match="1024..65535"):
        StackPorts(s3=80)


def test_a_pid_file_never_claims_a_recycled_pid(tmp_path):
    pidfile = PidFile(tmp_path / "x.pid")
    pidfile.write(os.getpid(), [sys.executable])
    assert pidfile.running_pid() == os.getpid()
    record = json.loads(pidfile.path.read_text())
    pidfile.path.write_text(json.dumps({**record, "start_time": "1"}))  # same pid, another process's start time
    assert pidfile.running_pid() is None


def test_service_names_follow_the_start_order(tmp_path):
    from infra.local.stack import services

    spec = StackSpec(state_dir=str(tmp_path / "stack"))
    assert tuple(s.name for s in services(spec)) == SERVICE_NAMES
