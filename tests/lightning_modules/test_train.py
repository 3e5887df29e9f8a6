"""Expert training with Lightning + MLflow on a tiny backbone with a real tokenizer."""

import json
import os
import random
import re
import subprocess
import sys
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
from lightning_modules.train import REPO_ROOT, build_trainer, train_expert
from tests.conftest import WORDS, backbone_bytes

NUMBERS = "two three four five six seven eight nine ten".split()


def sum_records():
    rows = []
    for i, a in enumerate(NUMBERS):
        for j, b in enumerate(NUMBERS):
            if i + j + 4 <= 10:
                rows.append({"prompt": f"what is the sum of {a} and {b}", "response": f"the answer is {NUMBERS[i + j + 2]}"})
    return rows


def varied_records(count: int = 31):
    """Word salads of 4 to 60 prompt words: an example is padded to very different widths in different
    batches, which (with the old batch-computed prefix cache) changed its cached prefix in the last bits."""
    rng = random.Random(0)
    return [
        {"prompt": " ".join(rng.choices(WORDS, k=rng.randint(4, 60))), "response": " ".join(rng.choices(WORDS, k=rng.randint(2, 12)))}
        for _ in range(count)
    ]


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


def resumable_job(job, **training):
    """`job` on variable-length data with the prefix cache on: a resume is exact only if a cached prefix
    equals a fresh one bit for bit (the resumed run starts with an empty cache)."""
    data = DataSpec(records=varied_records(), val_fraction=0.2, use_chat_template=False)
    return job.model_copy(update={"data": data, "training": job.training.model_copy(update={"prefix_cache_mb": 64, **training})})


def test_crash_and_resume_with_the_prefix_cache_is_bit_identical_to_an_uninterrupted_run(job, tmp_path):
    spec = resumable_job(job, max_steps=16, checkpoint_every_n_steps=5)
    module, data = _module_and_data(spec)
    build_trainer(spec, False, tmp_path / "a").fit(module, datamodule=data)
    uninterrupted = {k: v.clone() for k, v in module.state_dict().items()}
    assert module.prefix_cache.hits > 0  # later epochs read the cache

    crashed, data = _module_and_data(spec)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_trainer(spec, False, tmp_path / "b", callbacks=[_CrashAt(7)]).fit(crashed, datamodule=data)
    checkpoint = tmp_path / "b" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 5

    resumed, data = _module_and_data(spec)
    trainer = build_trainer(spec, False, tmp_path / "c")
    trainer.fit(resumed, datamodule=data, ckpt_path=str(checkpoint), weights_only=True)
    assert trainer.global_step == 16
    state = resumed.state_dict()
    assert state.keys() == uninterrupted.keys()
    assert [k for k in state if not torch.equal(state[k], uninterrupted[k])] == []


class _RunsCode:
    """Unpickling this calls `open(marker, "w")`: stands in for any code a crafted checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("url", ["https://example.com/last.ckpt", "s3://bucket/last.ckpt", "file:///tmp/last.ckpt", "runs:/abc/last.ckpt"])
@pytest.mark.parametrize("isolated", [False, True])
def test_a_url_to_resume_from_is_refused_before_anything_is_loaded(job, monkeypatch, url, isolated):
    def loaded(*args, **kwargs):
        raise AssertionError("something was loaded or launched before the URL was refused")

    for target in ("lightning_modules.train.load_backbone", "lightning_modules.train.subprocess.run", "torch.load", "torch.hub.load_state_dict_from_url"):
        monkeypatch.setattr(target, loaded)
    with pytest.raises(ValueError, match="is a URL; only local files are accepted.*copy the checkpoint to this machine"):
        train_expert(job, resume_from=url, isolated=isolated)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(job, tmp_path, monkeypatch):
    short = job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 2})})
    module, data = _module_and_data(short)
    trainer = build_trainer(short, False, tmp_path / "ckpt")
    trainer.fit(module, datamodule=data)
    checkpoint = torch.load(trainer.checkpoint_callback.last_model_path, weights_only=True)
    marker = tmp_path / "code-ran"
    checkpoint["loops"]["payload"] = _RunsCode(marker)
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # an environment that opted out of torch's safe default
    with pytest.raises(ValueError, match="refusing to load checkpoint .*crafted.ckpt.*other than tensors"):
        train_expert(short.model_copy(update={"output_dir": str(tmp_path / "resumed")}), resume_from=str(crafted))
    assert not marker.exists()
    torch.load(crafted, weights_only=False)  # the control: a full unpickle does run the payload
    assert marker.exists()


def test_train_expert_logs_one_mlflow_run_with_blob_and_lineage(job):
    result = train_expert(job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 6})}))
    backbone = load_backbone(job.backbone)
    expert = load_expert(result.blob_path, backbone, sha256=result.entry.sha256)
    assert expert.name == "adder" and list(expert.layer_indices) == result.entry.layers == [2, 3]
    assert result.entry.backbone_fingerprint == backbone.fingerprint and len(result.entry.data_fingerprint) == 64
    assert "train/loss" in result.entry.metrics and "val/loss" in result.entry.metrics

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path(job.tracking.root).resolve()}/mlflow.db")
    run = client.get_run(result.entry.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ccoe.expert"] == "adder" and run.data.tags["ccoe.domain"] == "math"
    assert run.data.tags["ccoe.backbone_fingerprint"] == backbone.fingerprint
    assert run.data.tags["ccoe.data_fingerprint"] == result.entry.data_fingerprint
    assert run.data.params["expert/layers/k"] == "2" and run.data.params["training/max_steps"] == "6"
    assert run.data.params["data/records"].startswith("<")
    assert {"train/loss", "val/loss", "train/tokens_per_s", "train/lr", "expert/bytes"} <= set(run.data.metrics)
    artifacts = {a.path for folder in ("expert", "config", "checkpoints") for a in client.list_artifacts(result.entry.run_id, folder)}
    assert {"expert/adder.safetensors", "config/job.yaml", "checkpoints/last.ckpt"} <= artifacts


def test_malformed_dataset_is_one_clear_error(job):
    bad = job.model_copy(update={"data": DataSpec(records=[{"prompt": "two", "response": "three"}, {"prompt": "four"}])})
    with pytest.raises(ValueError, match=r"data records\[1\].*'response'"):
        train_expert(bad)


def test_cli_entry_point_trains_one_job(job, tmp_path):
    from lightning_modules.train import main

    config = tmp_path / "job.yaml"
    job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 2})}).to_yaml(config)
    result_file = tmp_path / "result.json"
    assert main(["--config", str(config), "--result", str(result_file)]) == 0
    assert json.loads(result_file.read_text())["name"] == "adder"


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_logs_one_run(job):
    ddp = job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 4, "devices": 2, "strategy": "ddp"})})
    result = train_expert(ddp)
    assert Path(result.blob_path).is_file() and result.entry.metrics["train/loss"] > 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path(job.tracking.root).resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [result.entry.run_id]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["ccoe.world_size"] == "2"


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "lightning_modules.train", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_cli_user_errors_are_one_line_and_debug_shows_the_traceback(job, tmp_path):
    good = tmp_path / "job.yaml"
    job.to_yaml(good)
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("max_steps: 40", "max_steps: 0"))
    no_data = tmp_path / "no-data.yaml"
    job.model_copy(update={"data": DataSpec(source=str(tmp_path / "missing.jsonl"))}).to_yaml(no_data)
    cases = {
        "missing config": (["--config", str(tmp_path / "nope.yaml")], "config file .*nope.yaml does not exist"),
        "bad config": (["--config", str(bad)], "invalid ExpertJobSpec: .*max_steps Input should be greater than or equal to 1"),
        "missing data": (["--config", str(no_data)], "data source .*missing.jsonl"),
        "missing checkpoint": (["--config", str(good), "--resume-from", str(tmp_path / "no.ckpt")], "resume checkpoint .*no.ckpt does not exist"),
        "url checkpoint": (["--config", str(good), "--resume-from", "https://example.com/x.ckpt"], "is a URL; only local files"),
        "debug": (["--config", str(bad), "--debug"], None),
    }
    running = {name: _cli(*args, cwd=tmp_path) for name, (args, _) in cases.items()}  # side by side: each is mostly imports
    stderr = {name: process.communicate(timeout=300)[1] for name, process in running.items()}
    for name, (_, message) in cases.items():
        if message is None:
            continue
        assert running[name].returncode == 2, (name, stderr[name])
        assert "Traceback" not in stderr[name], name
        errors = [line for line in stderr[name].splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith("error: "), (name, stderr[name])
        assert re.search(message, errors[0]), (name, errors[0])
        assert stderr[name].rstrip().endswith(errors[0]), name

    assert running["debug"].returncode == 1 and "Traceback (most recent call last)" in stderr["debug"]
    assert "ValueError" in stderr["debug"] and "max_steps" in stderr["debug"]


def test_an_isolated_job_reports_its_progress_as_it_trains(job):
    """A job in a child process is not silent: every log_every_n_steps steps one line reaches the parent,
    and one after each validation (here at the end of the first epoch, step 4)."""
    import re

    lines = []
    short = job.model_copy(update={"training": job.training.model_copy(update={"max_steps": 5, "log_every_n_steps": 2})})
    train_expert(short, isolated=True, progress=lines.append)
    masked = [re.sub(r"loss \S+ \S+ s/step ETA \d+ s", "loss L T s/step ETA E s", re.sub(r"val/loss \d+\.\d{4}$", "val/loss V", line)) for line in lines]
    assert masked == ["[adder] step 2/5 loss L T s/step ETA E s", "[adder] step 4/5 loss L T s/step ETA E s",
                      "[adder] step 4/5 validation val/loss V", "[adder] step 5/5 loss L T s/step ETA E s"]


def sum_choice_records():
    """Sums as multiple choice: the right total and two wrong ones, the right one at a varying place."""
    rows = []
    for i, a in enumerate(NUMBERS[:5]):
        for j, b in enumerate(NUMBERS[:5]):
            right = NUMBERS[i + j + 2] if i + j + 2 < len(NUMBERS) else None
            if right is None:
                continue
            wrong = [n for n in NUMBERS if n != right][(i + 2 * j) % 6 : (i + 2 * j) % 6 + 2]
            options = [f"the answer is {n}" for n in wrong]
            place = (i + j) % 3
            options.insert(place, f"the answer is {right}")
            rows.append({"prompt": f"what is the sum of {a} and {b}", "choices": options, "answer": place})
    return rows


def test_the_choice_objective_teaches_the_expert_to_rank_the_options(job, tmp_path, capsys):
    """Trained through Lightning with objective `choice`, the expert ranks the right option first (by
    the scorer's length-normalised likelihood) far more often than the backbone, whose backbone bytes
    stay as they were; validation logs the choice accuracy next to the gold NLL, and prints them as a
    progress line."""
    choice_job = job.model_copy(update={
        "data": DataSpec(records=sum_choice_records(), val_fraction=0.2, use_chat_template=False, choices_field="choices"),
        "training": job.training.model_copy(update={"objective": "choice", "max_steps": 30, "val_check_interval": 30, "prefix_cache_mb": 8}),
    })
    module, data = _module_and_data(choice_job)
    before_bytes = backbone_bytes(module.model)

    def accuracy():
        with torch.no_grad():
            return sum(module._choice(b).accuracy * b["answer"].shape[0] for b in data.train_dataloader()) / (len(data.train_dataloader()) * 4)

    start = accuracy()
    trainer = build_trainer(choice_job, False, tmp_path / "ckpt")
    trainer.fit(module, datamodule=data)
    assert accuracy() >= 0.9 > start + 0.3
    assert backbone_bytes(module.model) == before_bytes
    assert {"val/loss", "val/choice_accuracy", "train/choice_accuracy"} <= set(trainer.logged_metrics)
    logged = trainer.logged_metrics
    validations = [line for line in capsys.readouterr().out.splitlines() if " validation " in line]
    assert validations == [f"ccoe-progress [adder] step 30/30 validation val/choice_accuracy {float(logged['val/choice_accuracy']):.4f} "
                           f"val/loss {float(logged['val/loss']):.4f}"]
