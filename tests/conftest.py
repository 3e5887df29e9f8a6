"""Shared fixtures: tiny backbones built from config in milliseconds, offline and telemetry-free."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Domain source files are fetched once from the package index into the repo's (git-ignored) data cache.
os.environ.setdefault("CCOE_DATA", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ccoe_data"))

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ccoe.backbone import load_backbone
from ccoe.config import BackboneSpec, StorageSpec
from ccoe.model import CCoEModel
from ccoe.storage import BlobStore

ARCHITECTURES = ("llama", "qwen2", "mistral", "qwen3", "phi3", "olmo2", "gemma3_text")
# What each family needs to be tiny and to exercise what sets it apart: token ids inside the 97-token
# vocabulary; Gemma 3 with small heads, alternating sliding (window 4) and full layers, and logit soft-capping.
ARCH_OVERRIDES = {
    "phi3": dict(pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "olmo2": dict(pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "qwen3": dict(head_dim=8),
    "gemma3_text": dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=4, final_logit_softcapping=30.0,
                        layer_types=None, sliding_window_pattern=2, bos_token_id=1, eos_token_id=2, pad_token_id=0),
}
pytest_plugins = ["tests.s3_server"]  # the session-scoped real S3 server fixture `s3_server`


def tiny_config(model_type: str = "llama", layers: int = 4, **overrides) -> dict:
    config = dict(
        model_type=model_type, vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    config.update(ARCH_OVERRIDES.get(model_type, {}))
    if model_type == "gemma3_text":
        config.pop("sliding_window_pattern")
        config["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    config.update(overrides)
    return config


def tiny_spec(model_type: str = "llama", layers: int = 4, seed: int = 0, **overrides) -> BackboneSpec:
    return BackboneSpec(source="config", config=tiny_config(model_type, layers, **overrides), seed=seed)


def perturb(expert, scale: float = 0.05, seed: int = 1):
    """Make an expert differ from the backbone copy it started as (stands in for training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in expert.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return expert


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CCOE_CACHE", str(tmp_path_factory.getbasetemp() / "ccoe-cache"))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A blob store on a local folder, then on the session's real S3 server (SeaweedFS)."""
    from tests.s3_server import BUCKET

    if request.param == "local":
        return BlobStore(StorageSpec(uri=str(tmp_path / "blobs-root")))
    endpoint = request.getfixturevalue("s3_server")
    return BlobStore(StorageSpec(uri=f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint_url=endpoint, region="us-east-1"))


@pytest.fixture(params=ARCHITECTURES)
def arch(request) -> str:
    return request.param


@pytest.fixture
def backbone(arch):
    return load_backbone(tiny_spec(arch))


@pytest.fixture
def llama_backbone():
    return load_backbone(tiny_spec("llama"))


@pytest.fixture
def model(backbone) -> CCoEModel:
    return CCoEModel(backbone)


def backbone_bytes(model) -> dict[str, bytes]:
    return {k: v.detach().clone().numpy().tobytes() for k, v in model.lm.state_dict().items()}


WORDS = ("what is the sum of two and three four five six seven eight nine ten plus minus equals answer "
         "write python function sql query law court patient dose").split()


def save_tiny_checkpoint(directory, model_type: str = "llama", layers: int = 4):
    """A tiny checkpoint folder with a word-level tokenizer whose vocabulary fits the model (97 ids)."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2}
    vocab.update({w: i + 3 for i, w in enumerate(WORDS)})
    vocab.update({f"w{i}": i for i in range(len(vocab), 97)})
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    backbone = load_backbone(tiny_spec(model_type, layers, eos_token_id=2, pad_token_id=0, initializer_range=0.3))
    backbone.model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def local_backbone_dir(tmp_path):
    return save_tiny_checkpoint(tmp_path / "tiny-llama")


def save_tiny_artifact(folder, backbone_dir, router=None):
    """An artifact folder on the tiny local backbone with fresh math and law experts (top layer each)."""
    from ccoe.artifact import save_artifact
    from ccoe.cli import build_model
    from ccoe.config import CCoESpec

    spec = CCoESpec.model_validate({"backbone": {"source": str(backbone_dir)}, "experts": [
        {"name": "math", "domain": "math", "layers": {"strategy": "top", "k": 1}},
        {"name": "law", "domain": "law", "layers": {"strategy": "top", "k": 1}}]})
    root = folder / "artifact"
    save_artifact(build_model(spec), str(root), router=router)
    return root


def real_backbone(tmp_path_factory, source: str):
    """A real offline backbone for a test module, de-quantized once per session into the session's cache
    (the per-test cache of `_isolated_cache` would redo it for every test)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CCOE_CACHE", str(tmp_path_factory.getbasetemp() / "ccoe-cache"))
    try:
        yield load_backbone(BackboneSpec(source=source))
    finally:
        mp.undo()
