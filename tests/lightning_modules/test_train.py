"""Expert training with Lightning + MLflow on a tiny backbone with a real tokenizer."""

import json
from pathlib import Path

import mlflow
import pytest
import pytorch_lightning as pl
import torch

from ccoe.backbone import fingerprint_model, load_backbone
from ccoe.config import BackboneSpec, DataSpec, ExpertJobSpec, ExpertSpec, LayerSelection, TrackingSpec, TrainingSpec
from ccoe.expert import expert_from_spec, load_expert
from ccoe.model import CCoEModel
from lightning_modules.expert_module import DomainDataModule, ExpertModule
from lightning_modules.train import build_trainer, train_expert
from tests.conftest import backbone_bytes

NUMBERS = "two three four five six seven eight nine ten".split()


def sum_records():
    rows = []
    for i, a in enumerate(NUMBERS):
        for j, b in enumerate(NUMBERS):
            if i + j + 4 <= 10:
                rows.append({"prompt": f"what is the sum of {a} and {b}", "response": f"the answer is {NUMBERS[i + j + 2]}"})
    return rows


@pytest.fixture
def job(local_backbone_dir, tmp_path):
    return ExpertJobSpec(
        backbone=BackboneSpec(source=str(local_backbone_dir)),
        expert=ExpertSpec(name="adder", domain="math", layers=LayerSelection(strategy="top", k=2)),
        data=DataSpec(records=sum_records(), val_fraction=0.2, use_chat_template=False),
        training=TrainingSpec(max_steps=40, batch_size=4, learning_rate=3e-3, warmup_steps=2, log_every_n_steps=5),
        tracking=TrackingSpec(root=str(tmp_path / "mlruns")),
        output_dir=str(tmp_path / "experts"),
    )


def _module_and_data(job):
    backbone = load_backbone(job.backbone)
    model = CCoEModel(backbone)
    model.push_expert(expert_from_spec(backbone, job.expert))
    data = DomainDataModule(job.data, job.training, backbone.tokenizer)
    data.setup("fit")
    return ExpertModule(model, job.expert.name, job.training), data


def _mean_loss(module, data):
    from ccoe.training import expert_lm_loss

    with torch.no_grad():
        losses = [expert_lm_loss(module.model, b, module.expert_name)[0] for b in data.train_dataloader()]
    return float(torch.stack(losses).mean())


def test_training_lowers_the_loss_and_leaves_the_backbone_untouched(job, tmp_path):
    module, data = _module_and_data(job)
    before_bytes, before_fp = backbone_bytes(module.model), module.model.fingerprint
    start = _mean_loss(module, data)
    trainer = build_trainer(job, False, tmp_path / "ckpt")
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 40
    assert _mean_loss(module, data) < 0.5 * start
    assert backbone_bytes(module.model) == before_bytes and fingerprint_model(module.model.lm) == before_fp
    assert not module.model.lm.training
    optimizer_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimizer_params == {id(p) for p in module.model.experts["adder"].parameters()}


def test_checkpoint_holds_only_the_expert_and_optimizer_state(job, tmp_path):
    module, data = _module_and_data(job)
    trainer = build_trainer(job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 3})}), False, tmp_path / "ckpt")
    trainer.fit(module, datamodule=data)
    path = Path(trainer.checkpoint_callback.last_model_path)
    checkpoint = torch.load(path, weights_only=True)
    expert_keys = set(module.model.experts["adder"].state_dict())
    assert set(checkpoint["state_dict"]) == expert_keys
    expert_bytes = module.model.experts["adder"].num_bytes()
    assert 2.5 * expert_bytes < path.stat().st_size < 3.5 * expert_bytes  # weights + AdamW's two moments


class _CrashAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_kill_and_resume_matches_an_uninterrupted_run(job, tmp_path):
    spec = job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 12, "checkpoint_every_n_steps": 5})})
    module, data = _module_and_data(spec)
    build_trainer(spec, False, tmp_path / "a").fit(module, datamodule=data)
    uninterrupted = {k: v.clone() for k, v in module.state_dict().items()}

    crashed, data = _module_and_data(spec)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_trainer(spec, False, tmp_path / "b", callbacks=[_CrashAt(7)]).fit(crashed, datamodule=data)
    checkpoint = tmp_path / "b" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 5

    resumed, data = _module_and_data(spec)
    trainer = build_trainer(spec, False, tmp_path / "c")
    trainer.fit(resumed, datamodule=data, ckpt_path=str(checkpoint))
    assert trainer.global_step == 12
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, uninterrupted[key], atol=1e-6, rtol=1e-5)


def test_train_expert_logs_one_mlflow_run_with_blob_and_lineage(job):
    result = train_expert(job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 6})}))
    backbone = load_backbone(job.backbone)
    expert = load_expert(result.blob_path, backbone, sha256=result.sha256)
    assert expert.name == "adder" and list(expert.layer_indices) == result.layers == [2, 3]
    assert result.backbone_fingerprint == backbone.fingerprint and len(result.data_fingerprint) == 64
    assert "train/loss" in result.metrics and "val/loss" in result.metrics

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path(job.tracking.root).resolve()}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ccoe.expert"] == "adder" and run.data.tags["ccoe.domain"] == "math"
    assert run.data.tags["ccoe.backbone_fingerprint"] == backbone.fingerprint
    assert run.data.tags["ccoe.data_fingerprint"] == result.data_fingerprint
    assert run.data.params["expert/layers/k"] == "2" and run.data.params["training/max_steps"] == "6"
    assert run.data.params["data/records"].startswith("<")
    assert {"train/loss", "val/loss", "train/tokens_per_s", "train/lr", "expert/bytes"} <= set(run.data.metrics)
    artifacts = {a.path for folder in ("expert", "config", "checkpoints") for a in client.list_artifacts(result.run_id, folder)}
    assert {"expert/adder.safetensors", "config/job.yaml", "checkpoints/last.ckpt"} <= artifacts


def test_malformed_dataset_is_one_clear_error(job):
    bad = job.model_copy(update={"data": DataSpec(records=[{"prompt": "two", "response": "three"}, {"prompt": "four"}])})
    with pytest.raises(ValueError, match="data row 1 is missing required field 'response'"):
        train_expert(bad)


def test_cli_entry_point_trains_one_job(job, tmp_path):
    from lightning_modules.train import main

    config = tmp_path / "job.yaml"
    job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 2})}).to_yaml(config)
    result_file = tmp_path / "result.json"
    assert main(["--config", str(config), "--result", str(result_file)]) == 0
    assert json.loads(result_file.read_text())["expert"] == "adder"


def test_ddp_on_two_cpu_processes_logs_one_run(job):
    ddp = job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 4, "devices": 2, "strategy": "ddp"})})
    result = train_expert(ddp)
    assert Path(result.blob_path).is_file() and result.metrics["train/loss"] > 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path(job.tracking.root).resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [result.run_id]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["ccoe.world_size"] == "2"
