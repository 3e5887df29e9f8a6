"""A training process killed with SIGKILL mid-run: the resume is exact and no MLflow run stays RUNNING.

Real processes (`python -m lightning_modules.train`), a real SIGKILL as soon as the first checkpoint is
on disk, the prefix cache on, and variable-length data (so a prefix computed in a batch of another
width would differ in the last bits).
"""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
from safetensors.torch import load_file

from ccoe.config import (
    BackboneSpec,
    DataSpec,
    ExpertJobSpec,
    ExpertSpec,
    LayerSelection,
    TrackingSpec,
    TrainingSpec,
)
from lightning_modules.train import REPO_ROOT, train_expert
from tests.lightning_modules.test_train import varied_records

MAX_STEPS = 40  # six epochs of 6 batches: far more steps than pass between the first checkpoint and the kill
# One torch thread per job: the reference and the victim run side by side on small CPUs. Every job in a
# test uses the same setting, so results may be compared bit for bit.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _job(backbone_dir: Path, root: Path) -> ExpertJobSpec:
    return ExpertJobSpec(
        backbone=BackboneSpec(source=str(backbone_dir)),
        expert=ExpertSpec(name="adder", domain="math", layers=LayerSelection(strategy="top", k=2)),
        data=DataSpec(records=varied_records(), val_fraction=0.2, use_chat_template=False),
        training=TrainingSpec(
            max_steps=MAX_STEPS, batch_size=4, learning_rate=3e-3, warmup_steps=2, log_every_n_steps=5,
            checkpoint_every_n_steps=5, prefix_cache_mb=64,
        ),
        tracking=TrackingSpec(root=str(root / "mlruns")),
        output_dir=str(root / "experts"),
    )


def _start(job: ExpertJobSpec, root: Path, *args: str) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    job.to_yaml(root / "job.yaml")
    command = [sys.executable, "-m", "lightning_modules.train", "--config", str(root / "job.yaml"), "--result", str(root / "result.json"), *args]
    with open(root / "log.txt", "ab") as log:
        return subprocess.Popen(command, cwd=root, env={**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO_ROOT)}, stdout=log, stderr=subprocess.STDOUT)


def _first_checkpoint(job: ExpertJobSpec, alive, log: Path | None = None, timeout_s: float = 300) -> Path:
    """The first `last.ckpt` the job writes (polled every 20 ms) while `alive()` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted((Path(job.output_dir) / job.expert.name / "checkpoints").glob("*/last.ckpt"))
        if found:
            return found[0]
        assert alive(), log.read_text()[-3000:] if log else "the training process ended before writing a checkpoint"
        time.sleep(0.02)
    raise AssertionError("no checkpoint within the time limit")


def _run_status(job: ExpertJobSpec, run_id: str):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path(job.tracking.root).resolve()}/mlflow.db").get_run(run_id)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical_to_an_uninterrupted_run(local_backbone_dir, tmp_path):
    reference_job, job = _job(local_backbone_dir, tmp_path / "reference"), _job(local_backbone_dir, tmp_path / "killed")
    reference = _start(reference_job, tmp_path / "reference")
    victim = _start(job, tmp_path / "killed")
    checkpoint = _first_checkpoint(job, lambda: victim.poll() is None, tmp_path / "killed" / "log.txt")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    step = torch.load(checkpoint, weights_only=True)["global_step"]
    assert 5 <= step < MAX_STEPS - 10, "the kill did not land mid-run"

    resumed = _start(job, tmp_path / "killed", "--resume-from", str(checkpoint))
    assert resumed.wait(timeout=600) == 0, (tmp_path / "killed" / "log.txt").read_text()[-3000:]
    assert reference.wait(timeout=600) == 0, (tmp_path / "reference" / "log.txt").read_text()[-3000:]

    expected = load_file(json.loads((tmp_path / "reference" / "result.json").read_text())["blob_path"])
    result = json.loads((tmp_path / "killed" / "result.json").read_text())
    actual = load_file(result["blob_path"])
    assert actual.keys() == expected.keys() and len(actual) == 18
    assert [k for k in actual if not torch.equal(actual[k], expected[k])] == []

    killed_run = _run_status(job, checkpoint.parent.name)  # checkpoints live under the run id
    assert killed_run.info.status == "FAILED"  # closed by the resumed job's sweep (same host, process dead)
    assert "died without closing the run" in killed_run.data.tags["ccoe.failure"]
    assert _run_status(job, result["entry"]["run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_an_isolated_child_killed_with_sigkill_leaves_its_run_failed(local_backbone_dir, tmp_path, monkeypatch):
    for name, value in ONE_THREAD.items():
        monkeypatch.setenv(name, value)
    job = _job(local_backbone_dir, tmp_path)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(train_expert, job, isolated=True)

        def child_alive():
            assert not future.done(), future.exception()
            return True

        checkpoint = _first_checkpoint(job, child_alive)
        (child,) = _training_children()
        child.send_signal(signal.SIGKILL)
        with pytest.raises(RuntimeError, match="expert 'adder' failed \\(killed by SIGKILL\\)"):
            future.result(timeout=120)
    run = _run_status(job, checkpoint.parent.name)
    assert (run.info.status, run.data.tags["ccoe.pid"]) == ("FAILED", str(child.pid)), run.data.tags
    assert run.info.end_time is not None


def _training_children() -> list[psutil.Process]:
    """This process's live `lightning_modules.train` children."""
    found = []
    for process in psutil.Process().children():
        try:
            if "lightning_modules.train" in process.cmdline():
                found.append(process)
        except psutil.Error:  # ended (or became a zombie) since it was listed
            continue
    return found
