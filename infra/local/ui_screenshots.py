"""Screenshots of what a person sees in the two UIs after `make demo`: the MLflow registry (the
registered model, a version's description with the gate's table) and the Prefect `retrain-expert`
run form. Written to `docs/ui/*.png` and shown in the README.

Starts an MLflow server on the demo's store (`out/demo/mlruns/mlflow.db`) and a Prefect server with a
throw-away home, both on 127.0.0.1 at free ports, registers the deployments on a `process` work pool
(`flows.deploy.deploy_to_pool`), renders each page in headless Chromium (Debian's `chromium`
package) and stops both servers by pid. Nothing is sent anywhere else.

    python infra/local/ui_screenshots.py [--store out/demo/mlruns] [--model ccoe_demo] [--out docs/ui]
        [--continual out/continual-kept [--only-continual]]   # an expert's lineage after continual updates
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
TELEMETRY_OFF = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Poll `url` until it answers 200; a clear error if the server exits or never answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL after 20 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def screenshot(chromium: str, url: str, path: Path, width: int = 1440, height: int = 1000, budget_ms: int = 20000) -> None:
    """Render `url` in headless Chromium (its scripts given `budget_ms` of virtual time) into `path`."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
                        f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=180)
    if not path.is_file() or path.stat().st_size < 5000:
        raise RuntimeError(f"Chromium wrote no usable screenshot of {url} to {path}")
    print(f"  {path} <- {url}")


def _prefect_id(api: str, deployment: str) -> str:
    with urllib.request.urlopen(f"{api}/deployments/name/{deployment}", timeout=10) as response:
        return json.loads(response.read())["id"]


def mlflow_server(database: Path, base: dict) -> tuple[subprocess.Popen, str]:
    """An MLflow server on `database` at a free port of 127.0.0.1, answering; (process, UI URL)."""
    port = free_port()
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{database.resolve()}",
                               "--host", HOST, "--port", str(port), "--workers", "1"],
                              env=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return server, f"http://{HOST}:{port}"


def lineage_screenshots(chromium: str, folder: Path, out: Path, base: dict) -> None:
    """From a folder kept by `bench_continual.py --keep`: the continued registry's newest version (its
    `ccoe.expert.math` tag names the parent blob and the shards seen) and the training run that made it
    (tags `ccoe.init`, `ccoe.parent_sha256`, `ccoe.shards`)."""
    import mlflow

    database = folder / "continued" / "mlruns" / "mlflow.db"
    if not database.is_file():
        raise SystemExit(f"{database} does not exist: run `python benchmarks/bench_continual.py --keep {folder}` first")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database.resolve()}")
    model = client.search_registered_models()[0].name
    version = max(client.search_model_versions(f"name = '{model}'"), key=lambda v: int(v.version))
    run_id = json.loads(version.tags[next(k for k in version.tags if k.startswith("ccoe.expert."))])["run_id"]
    experiment = client.get_run(run_id).info.experiment_id
    server, ui = mlflow_server(database, base)
    try:
        wait_http(f"{ui}/health", server)
        screenshot(chromium, f"{ui}/#/models/{model}/versions/{version.version}", out / "mlflow-continual-version.png", height=1400)
        screenshot(chromium, f"{ui}/#/experiments/{experiment}/runs/{run_id}", out / "mlflow-continual-run.png", height=1400)
    finally:
        stop(server)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=REPO / "out" / "demo" / "mlruns", help="the demo's tracking root (mlflow.db inside)")
    p.add_argument("--model", default="ccoe_demo", help="registered model to show")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--config", default="configs/demo.yaml", help="PipelineSpec the deployments read")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "ui")
    p.add_argument("--continual", type=Path, help="also an expert's lineage, from a folder kept by bench_continual.py --keep")
    p.add_argument("--only-continual", action="store_true", help="only the lineage screenshots")
    args = p.parse_args(argv)
    database = args.store / "mlflow.db"
    if not args.only_continual and not database.is_file():
        raise SystemExit(f"{database} does not exist: run `make demo` first")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("headless Chromium is missing: apt-get install -y chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    base = {**os.environ, **TELEMETRY_OFF}
    base.pop("PREFECT_API_URL", None)
    if args.continual is not None:
        lineage_screenshots(chromium, args.continual, args.out, base)
        if args.only_continual:
            return 0
    prefect_port = free_port()
    servers = []
    with tempfile.TemporaryDirectory() as home:
        try:
            mlflow, ui = mlflow_server(database, base)
            servers.append(mlflow)
            api = f"http://{HOST}:{prefect_port}/api"
            # The UI's browser code calls PREFECT_UI_API_URL, which defaults to port 4200 whatever --port says:
            # without it every page of a server on another port shows "Oops. Something went wrong".
            prefect_env = {**base, "PREFECT_HOME": home, "PREFECT_UI_API_URL": api}
            prefect = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
                                       env=prefect_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            servers.append(prefect)
            wait_http(f"{ui}/health", mlflow)
            wait_http(f"{api}/health", prefect)
            client_env = {**prefect_env, "PREFECT_API_URL": api}
            subprocess.run([str(BIN / "prefect"), "work-pool", "create", "ccoe", "--type", "process"], env=client_env, check=True,
                           capture_output=True, cwd=REPO)
            subprocess.run([sys.executable, "-m", "flows.deploy", "--work-pool", "ccoe", "--config", args.config], env=client_env,
                           check=True, capture_output=True, cwd=REPO)
            retrain = _prefect_id(api, "retrain-expert/retrain-expert")
            screenshot(chromium, f"{ui}/#/models/{args.model}", args.out / "mlflow-registered-model.png")
            screenshot(chromium, f"{ui}/#/models/{args.model}/versions/{args.version}", args.out / "mlflow-version.png", height=1600)
            screenshot(chromium, f"http://{HOST}:{prefect_port}/deployments", args.out / "prefect-deployments.png")
            screenshot(chromium, f"http://{HOST}:{prefect_port}/deployments/deployment/{retrain}/run", args.out / "prefect-retrain-form.png",
                       height=1400)
        finally:
            for server in servers:
                stop(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
