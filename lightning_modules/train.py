"""Train one expert: `train_expert(job)` for the flows, `python -m lightning_modules.train` by hand.

One job = one MLflow run: params (the whole job spec), tags (expert, domain, backbone and data
fingerprints, blob sha256), metrics (train/val loss, tokens/s, lr), and artifacts (the resolved config,
the last expert-only checkpoint, and the expert blob unless the job puts it into a blob store). Only
global rank 0 writes the blob and the artifacts. The result is a `ccoe.manifest.TrainedExpert`.

Multi-process strategies (`ddp`, several devices or nodes) re-execute the entry point for every rank,
so `train_expert` runs them as a `python -m lightning_modules.train` subprocess and reads its result
file: a flow (or notebook) calling it is never re-executed.

Resuming (`--resume-from`) takes a local checkpoint file only and never unpickles anything but tensors
and plain containers (`lightning_modules.checkpoint_io`). From the command line, a user error (bad
config, missing data, bad resume path) is one `error: ...` line and exit status 2; `--debug` shows the
traceback.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint

from ccoe import registry
from ccoe.backbone import load_backbone
from ccoe.config import ExpertJobSpec, load_yaml
from ccoe.expert import continued_expert, expert_from_spec, save_expert
from ccoe.manifest import ExpertEntry, TrainedExpert
from ccoe.model import CCoEModel
from ccoe.storage import BlobStore, blob_name
from lightning_modules.checkpoint_io import SafeCheckpointIO, local_checkpoint
from lightning_modules.expert_module import DomainDataModule, ExpertModule
from lightning_modules.tracking import job_params, log_files, make_logger

REPO_ROOT = Path(__file__).resolve().parent.parent
# Exceptions that mean "the job as given cannot run" (config, data, paths): one line and exit 2.
USER_ERRORS = (ValueError, KeyError, OSError, yaml.YAMLError)


def _needs_launcher(job: ExpertJobSpec) -> bool:
    t = job.training
    return t.devices * t.num_nodes > 1 or t.strategy.startswith("ddp")


PROGRESS_PREFIX = "ccoe-progress "


class ProgressLines(pl.Callback):
    """Every `log_every_n_steps` steps (and at the last), rank 0 prints one line: step, loss, seconds
    per step and ETA, flushed; after every validation, one line with the validation metrics (val/loss,
    and val/choice_accuracy under the choice objective), so a step count can be chosen on the validation
    split from the log alone. A person running the CLI reads them; the parent of an isolated job picks
    the lines out of the child's output by their prefix and forwards them (to the flow's log)."""

    def __init__(self, name: str, every: int):
        self.name, self.every = name, every

    def on_train_start(self, trainer, pl_module):
        self._started, self._first_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step, total = trainer.global_step, trainer.max_steps
        if not trainer.is_global_zero or (step % self.every and step != total):
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        per_step = (time.perf_counter() - self._started) / max(step - self._first_step, 1)
        print(f"{PROGRESS_PREFIX}[{self.name}] step {step}/{total} loss {float(loss):.4f} {per_step:.2f} s/step "
              f"ETA {per_step * (total - step):.0f} s", flush=True)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val/")}
        print(f"{PROGRESS_PREFIX}[{self.name}] step {trainer.global_step}/{trainer.max_steps} validation "
              + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)


def build_trainer(job: ExpertJobSpec, logger, checkpoint_dir: Path, callbacks=()) -> pl.Trainer:
    """The Lightning Trainer of a job: expert-only checkpoints every N steps (and `last.ckpt`), read back
    only as local files with `weights_only=True` (SafeCheckpointIO), and progress lines (ProgressLines)
    instead of a progress bar, which is unreadable in a log."""
    t = job.training
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0, every_n_train_steps=t.checkpoint_every_n_steps or t.max_steps)
    return pl.Trainer(
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None if t.val_check_interval else 1,
        log_every_n_steps=t.log_every_n_steps,
        logger=logger,
        callbacks=[checkpoint, ProgressLines(job.expert.name, t.log_every_n_steps), *callbacks],
        enable_progress_bar=False,
        plugins=[SafeCheckpointIO()],
        use_distributed_sampler=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )


def initial_expert(job: ExpertJobSpec, backbone):
    """The expert a job starts from: fresh copies of the backbone's layers, or (`job.init`) the parent
    expert's weights, read from its blob store and sha256-checked (`ccoe.expert.continued_expert`)."""
    if job.init is None:
        return expert_from_spec(backbone, job.expert)
    data = BlobStore(job.init.storage).get(blob_name(job.init.sha256))
    return continued_expert(data, job.init.sha256, backbone, job.expert)


def train_in_process(job: ExpertJobSpec, resume_from: str | None = None) -> TrainedExpert | None:
    """Run the job in this process (every rank of a multi-process run calls this). Rank 0 returns the result.

    A bad `resume_from` is refused before anything is loaded, and data whose fingerprint differs from
    the planner's (`job.data_fingerprint`) before any step. With `job.storage` the blob goes straight
    into that blob store (the MLflow run records its sha256); without, it is logged to the run. If the
    job fails after its MLflow run was created, the run is closed as FAILED (a SIGKILL is handled by
    `registry.fail_dead_runs` instead).
    """
    if resume_from is not None:
        resume_from = str(local_checkpoint(resume_from))
    started = time.perf_counter()
    pl.seed_everything(job.training.seed, workers=True, verbose=False)
    backbone = load_backbone(job.backbone)
    model = CCoEModel(backbone)
    model.push_expert(initial_expert(job, backbone))
    data = DomainDataModule(job.data, job.training, backbone.tokenizer)
    data.setup("fit")
    if job.data_fingerprint is not None and data.prepared.fingerprint != job.data_fingerprint:
        raise ValueError(
            f"the data of expert {job.expert.name!r} changed between planning and training (fingerprint "
            f"{data.prepared.fingerprint[:12]}…, planned {job.data_fingerprint[:12]}…); run the pipeline again"
        )
    module = ExpertModule(model, job.expert.name, job.training)
    out_dir = Path(job.output_dir).resolve() / job.expert.name
    tags = {
        "ccoe.domain": job.expert.domain,
        "ccoe.layers": json.dumps(list(model.experts[job.expert.name].layer_indices)),
        "ccoe.backbone_fingerprint": backbone.fingerprint,
        "ccoe.data_fingerprint": data.prepared.fingerprint,
        "ccoe.init": "backbone" if job.init is None else "continued",
    }
    if job.init is not None:
        tags["ccoe.parent_sha256"] = job.init.sha256
    if job.shards:
        tags["ccoe.shards"] = ",".join(s[:16] for s in job.shards)[:5000]
        tags["ccoe.shard_count"] = str(len(job.shards))
    logger = make_logger(job, tags)
    run_id = logger.run_id  # creates the run on rank 0
    try:
        trainer = build_trainer(job, logger, out_dir / "checkpoints" / (run_id or "run"))
        if trainer.is_global_zero:
            logger.log_hyperparams(job_params(job))
            logger.experiment.set_tag(run_id, "ccoe.world_size", str(trainer.world_size))
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
        if not trainer.is_global_zero:
            return None

        expert = model.experts[job.expert.name]
        blob = save_expert(expert, out_dir / f"{job.expert.name}.safetensors")
        config_path = out_dir / "job.yaml"
        job.to_yaml(config_path)
        last = trainer.checkpoint_callback.last_model_path or None
        files = {"config": config_path}
        if job.storage is None:  # the run is the blob's only persistent copy
            files["expert"] = blob.path
        else:  # one hop: the blob goes straight to the store the merge reads
            BlobStore(job.storage).put_blob(Path(blob.path).read_bytes())
        if last:
            files["checkpoints"] = last
        log_files(logger, files)
        logger.experiment.set_tag(run_id, "ccoe.blob_sha256", blob.sha256)
        logger.experiment.log_metric(run_id, "expert/bytes", float(blob.num_bytes))
    except BaseException:
        logger.finalize("failed")
        raise
    logger.finalize("success")
    # Finite values only: JSON (results, manifests) has no NaN, and a diverged run must still hand over its result.
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1 and torch.isfinite(v)}
    entry = ExpertEntry(
        domain=job.expert.domain, layers=list(expert.layer_indices), sha256=blob.sha256, bytes=blob.num_bytes,
        backbone_fingerprint=backbone.fingerprint, run_id=run_id, data_fingerprint=data.prepared.fingerprint, metrics=metrics,
        parent_sha256=job.init.sha256 if job.init is not None else None, shards=list(job.shards),
    )
    return TrainedExpert(name=job.expert.name, entry=entry, stored_in=job.storage, blob_path=blob.path, checkpoint_path=last,
                         seconds=time.perf_counter() - started)


def train_expert(job: ExpertJobSpec, resume_from: str | None = None, isolated: bool = False,
                 progress: Callable[[str], None] = print) -> TrainedExpert:
    """Train one expert and return its manifest entry (blob sha256, MLflow run id, data fingerprint, metrics).

    Single-process jobs run here unless `isolated` (then in a child process, so a crash or an OOM stays
    there and torch threads do not fight); multi-process jobs always run as a subprocess. The child
    works in this process's directory (relative paths in the job mean the same in both), its progress
    lines go to `progress` as they come (the flows pass their logger), and when it dies without closing
    its MLflow run (SIGKILL, OOM killer) this parent marks that run FAILED.
    """
    if resume_from is not None:
        resume_from = str(local_checkpoint(resume_from).resolve())
    if not (isolated or _needs_launcher(job)):
        return train_in_process(job, resume_from)
    with tempfile.TemporaryDirectory(prefix="ccoe-train-") as tmp:
        config, result = Path(tmp) / "job.yaml", Path(tmp) / "result.json"
        job.to_yaml(config)
        command = [sys.executable, "-m", "lightning_modules.train", "--config", str(config), "--result", str(result)]
        if resume_from:
            command += ["--resume-from", resume_from]
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        returncode, tail = _run_child(command, {**os.environ, "PYTHONPATH": path}, progress)
        if returncode != 0:
            how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit {returncode}"
            try:
                registry.fail_dead_runs(job.tracking, job.expert.name)
            except Exception as err:  # the job's own failure is the error to report, not the tracking store's
                how += f"; its MLflow run could not be marked FAILED: {_one_line(err)}"
            raise RuntimeError(f"training job for expert {job.expert.name!r} failed ({how}):\n{tail[-3000:]}")
        return TrainedExpert.model_validate_json(result.read_text())


def _run_child(command: list[str], env: dict[str, str], progress: Callable[[str], None]) -> tuple[int, str]:
    """Run a training child; forward its progress lines as they come, keep the rest of its output's tail
    for the error message. Returns (exit status, tail)."""
    tail: collections.deque[str] = collections.deque(maxlen=400)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as child:
        for line in child.stdout:
            if line.startswith(PROGRESS_PREFIX):
                progress(line[len(PROGRESS_PREFIX):].rstrip())
            else:
                tail.append(line)
    return child.returncode, "".join(tail)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train one CCoE expert (an ExpertJobSpec YAML) with PyTorch Lightning")
    p.add_argument("--config", required=True, type=Path, help="ExpertJobSpec YAML")
    p.add_argument("--resume-from", help="a local expert checkpoint (.ckpt) to continue from; URLs are refused")
    p.add_argument("--result", type=Path, help="write the result as JSON here (rank 0)")
    p.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    args = p.parse_args(argv)
    try:
        job = load_yaml(ExpertJobSpec, args.config)
        result = train_in_process(job, args.resume_from)
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, USER_ERRORS):
            print(f"error: {_one_line(err)}", file=sys.stderr)
            return 2
        print(f"error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    if result is not None:
        text = result.model_dump_json(indent=2)
        if args.result:
            args.result.write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
