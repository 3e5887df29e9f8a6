"""`ccoe serve` as a real process on 127.0.0.1, used through the `openai` client: answers, streams, refusals,
and a hot swap of the artifact under load with no failed request."""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from ccoe.artifact import load_artifact, save_artifact
from ccoe.config import RouterSpec, load_yaml
from tests import processes
from tests.conftest import perturb, save_tiny_artifact
from tests.serving.test_batching import alone
from tests.test_router import ROUTER_YAML


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tiny artifact (math and law experts, the shipped rules) served with a 0.5 s poll of its folder."""
    from tests.conftest import save_tiny_checkpoint

    folder = tmp_path_factory.mktemp("serve")
    backbone_dir = save_tiny_checkpoint(folder / "tiny")
    root = save_tiny_artifact(folder, backbone_dir, router=load_yaml(RouterSpec, ROUTER_YAML))
    model, _, _ = load_artifact(str(root))
    for n, expert in enumerate(model.experts.values()):  # experts that differ from the backbone
        perturb(expert, scale=0.3, seed=n)
    save_artifact(model, str(root), router=load_yaml(RouterSpec, ROUTER_YAML))
    port = processes.free_port()
    log = folder / "server.log"
    env = {**os.environ, "CCOE_CACHE": str(folder / "cache")}
    process = processes.start([sys.executable, "-m", "ccoe.cli", "serve", "--model", str(root), "--port", str(port),
                               "--poll-interval", "0.5"], env, log)
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/health", process, log, timeout_s=120)
        yield {"url": f"http://127.0.0.1:{port}", "root": root, "log": log, "process": process}
    finally:
        processes.stop(process)


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy_text(root, prompt: str, expert) -> str:
    model, _, _ = load_artifact(str(root))
    tokenizer = model.backbone.tokenizer
    ids = tokenizer(prompt)["input_ids"]
    return tokenizer.decode(alone(model, tokenizer, ids, expert, 8), skip_special_tokens=True)


def post(url: str, data: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def declare_only(url: str, path: str, length: int) -> tuple[int, dict]:
    """POST headers announcing a body of `length` bytes, without sending it (a client that would stream 2 MiB)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def metric(server, name: str) -> float:
    text = urllib.request.urlopen(server["url"] + "/metrics", timeout=10).read().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(f"ccoe_{name} ")))


def test_models_lists_auto_backbone_and_every_expert(server):
    ids = [m.id for m in client(server).models.list().data]
    assert ids == ["auto", "backbone", "law", "math"]


def test_a_chat_answer_and_its_stream_match_the_expert_run_alone(server):
    prompt = "what is the sum of two and three"
    expected = greedy_text(server["root"], prompt, "math")
    api = client(server)
    reply = api.chat.completions.create(model="math", messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.model_extra["ccoe"]["expert"] == "math" and reply.usage.completion_tokens >= 1
    chunks = list(api.chat.completions.create(model="math", messages=[{"role": "user", "content": prompt}], max_tokens=8,
                                              temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert {c.model_extra["ccoe"]["expert"] for c in chunks} == {"math"}


def test_auto_routes_by_the_gate_and_says_why(server):
    api = client(server)
    reply = api.completions.create(model="auto", prompt="What is 45 + 17?", max_tokens=4, temperature=0)
    assert reply.model_extra["ccoe"]["expert"] == "math" and reply.model_extra["ccoe"]["reason"]
    text = "".join(c.choices[0].text for c in api.completions.create(model="backbone", prompt="law court", max_tokens=4,
                                                                      temperature=0, stream=True))
    assert text == greedy_text(server["root"], "law court", None)[:len(text)] and len(text) > 0


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_running(server):
    api = client(server)
    with pytest.raises(openai.NotFoundError, match="unknown model 'medical'"):
        api.completions.create(model="medical", prompt="hello", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        api.completions.create(model="math", prompt="hello", max_tokens=2, temperature=5)
    with pytest.raises(openai.BadRequestError, match="exceeds the context"):
        api.completions.create(model="math", prompt="law " * 200, max_tokens=2)
    status, body = post(server["url"] + "/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = post(server["url"] + "/v1/completions", json.dumps({"model": "math", "prompt": "x", "logit_bias": {}}).encode())
    assert status == 400 and body["error"]["param"] == "logit_bias"
    status, body = declare_only(server["url"], "/v1/completions", 2 << 20)  # refused before a byte of the body is read
    assert status == 413 and "exceeds 1048576 bytes" in body["error"]["message"]
    assert urllib.request.urlopen(server["url"] + "/health", timeout=10).status == 200
    text = urllib.request.urlopen(server["url"] + "/metrics", timeout=10).read().decode()
    assert 'ccoe_rejected_total{status="404"}' in text and 'ccoe_rejected_total{status="413"}' in text


def test_a_new_expert_is_swapped_in_under_load_with_no_failed_request(server):
    """Requests keep coming while the artifact's math expert is replaced: none fails, only math is loaded,
    and answers after the swap come from the new expert."""
    api, prompt = client(server), "what is the sum of two and three"
    old_text = greedy_text(server["root"], prompt, "math")
    loads, swaps = metric(server, "expert_loads_total"), metric(server, "swaps_total")
    failures, answers, stop = [], [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                reply = api.completions.create(model="math", prompt=prompt, max_tokens=6, temperature=0)
                answers.append(reply.choices[0].text)
            except Exception as err:  # every failure is collected and asserted on
                failures.append(repr(err))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    model, _, _ = load_artifact(str(server["root"]))
    perturb(model.experts["math"], scale=0.5, seed=11)
    save_artifact(model, str(server["root"]), router=load_yaml(RouterSpec, ROUTER_YAML))
    new_text = greedy_text(server["root"], prompt, "math")
    assert new_text != old_text  # else the test could not tell the experts apart
    deadline = time.monotonic() + 30
    while metric(server, "swaps_total") < swaps + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join(60)
    assert failures == [] and len(answers) >= 8
    assert metric(server, "swaps_total") == swaps + 1 and metric(server, "expert_loads_total") == loads + 1
    after = api.completions.create(model="math", prompt=prompt, max_tokens=6, temperature=0).choices[0].text
    assert after and after == new_text[:len(after)]
    assert set(answers) <= {old_text[:len(a)] for a in answers} | {new_text[:len(a)] for a in answers}
    assert metric(server, "resident_experts") == 2  # the old math was popped once its requests finished


def test_model_plan_runs_expert_planning_and_returns_its_trace(tmp_path, local_backbone_dir):
    """`model: plan` answers what `plan_and_run` answers on the same artifact, with the plan's experts and trace."""
    from fastapi.testclient import TestClient

    from ccoe.cli import build_model
    from ccoe.config import CCoESpec, ServeSpec
    from ccoe.planning import plan_and_run
    from ccoe.serving.hot_swap import ExpertPool, ManifestSource
    from ccoe.serving.http import create_app

    spec = CCoESpec.model_validate({"backbone": {"source": str(local_backbone_dir)}, "experts": [
        {"name": "math", "domain": "math", "layers": {"strategy": "top", "k": 1}},
        {"name": "planner", "domain": "planning", "layers": {"strategy": "top", "k": 1}}]})
    model = build_model(spec)
    for n, expert in enumerate(model.experts.values()):
        perturb(expert, scale=0.3, seed=40 + n)
    root = tmp_path / "artifact"
    save_artifact(model, str(root), router=load_yaml(RouterSpec, ROUTER_YAML))
    loaded, router, manifest = load_artifact(str(root))
    query = "what is the sum of two and three"
    expected = plan_and_run(loaded, loaded.backbone.tokenizer, manifest, router, [query])[0]

    pool = ExpertPool(ManifestSource(str(root)))
    pool.engine.start()
    try:
        with TestClient(create_app(pool, ServeSpec())) as http:
            assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["auto", "backbone", "plan", "math"]
            reply = http.post("/v1/completions", json={"model": "plan", "prompt": query, "max_tokens": 4}).json()
            assert reply["choices"][0]["text"] == expected.text
            assert reply["ccoe"]["expert"] == ">".join(s.expert or "backbone" for s in expected.plan.steps)
            assert reply["ccoe"]["trace"] == json.loads(json.dumps(expected.as_dict()))
            lines = http.post("/v1/completions", json={"model": "plan", "prompt": query, "stream": True}).text.splitlines()
            chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
            assert "".join(c["choices"][0]["text"] for c in chunks) == expected.text and expected.text
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and [line for line in lines if line][-1] == "data: [DONE]"
    finally:
        pool.engine.close()
    limited = ExpertPool(ManifestSource(str(root)), max_resident=1)
    with TestClient(create_app(limited, ServeSpec())) as http:
        refused = http.post("/v1/completions", json={"model": "plan", "prompt": query})
    assert refused.status_code == 400 and "without max_resident" in refused.json()["error"]["message"]
