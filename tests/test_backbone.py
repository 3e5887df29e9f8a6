import pytest
import torch

from ccoe.backbone import SUPPORTED_ARCHITECTURES, check_architecture, fingerprint_model, load_backbone
from ccoe.config import BackboneSpec
from tests.conftest import tiny_config, tiny_spec


def test_backbone_is_frozen_and_in_eval_mode(backbone):
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    assert backbone.num_layers == 4


def test_fingerprint_is_deterministic_and_sensitive(arch):
    a, b = load_backbone(tiny_spec(arch)), load_backbone(tiny_spec(arch))
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert load_backbone(tiny_spec(arch, seed=1)).fingerprint != a.fingerprint
    with torch.no_grad():
        b.model.model.norm.weight[0] += 1e-3
    assert fingerprint_model(b.model) != a.fingerprint


def test_fingerprint_is_taken_before_the_dtype_cast():
    fp32 = load_backbone(tiny_spec("llama"))
    bf16 = load_backbone(tiny_spec("llama").model_copy(update={"dtype": "bfloat16"}))
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.fingerprint == fp32.fingerprint


def test_local_directory_round_trip_keeps_fingerprint(tmp_path):
    original = load_backbone(tiny_spec("qwen2"))
    original.model.save_pretrained(tmp_path / "ckpt")
    loaded = load_backbone(BackboneSpec(source=str(tmp_path / "ckpt")))
    assert loaded.fingerprint == original.fingerprint
    ids = torch.randint(0, 97, (2, 6))
    assert torch.equal(loaded.model(ids).logits, original.model(ids).logits)
    assert load_backbone(BackboneSpec(source=str(tmp_path / "ckpt"))).fingerprint == original.fingerprint  # cached


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    supported = "llama, qwen2, mistral, qwen3, phi3, olmo2, gemma3_text"
    assert SUPPORTED_ARCHITECTURES == tuple(supported.split(", "))
    for model_type in ("gpt2", "granite", "gemma2", None):
        with pytest.raises(ValueError, match=f"supported `model_type`: one of {supported}"):
            BackboneSpec(source="config", config={"model_type": model_type, "n_layer": 2})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "granite"}')
    with pytest.raises(ValueError, match=f"has model_type 'granite'; ccoe supports {supported}"):
        BackboneSpec(source=str(tmp_path / "ckpt"))
    (tmp_path / "ckpt" / "config.json").write_text("not json")
    with pytest.raises(ValueError, match="is not a readable JSON config"):
        BackboneSpec(source=str(tmp_path / "ckpt"))
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in tiny_config("gemma3_text").items() if k != "model_type"}
    encoder = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma3_text", **fields, use_bidirectional_attention=True))
    with pytest.raises(ValueError, match="use_bidirectional_attention is an encoder"):
        check_architecture(encoder)


def test_hub_id_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="cannot load backbone 'HuggingFaceTB/SmolLM2-135M-Instruct'"):
        load_backbone(BackboneSpec(source="HuggingFaceTB/SmolLM2-135M-Instruct"))


def test_spec_validation():
    with pytest.raises(ValueError, match="needs a `config` mapping"):
        BackboneSpec(source="config")
    with pytest.raises(ValueError, match="only used with source 'config'"):
        BackboneSpec(source="some/dir", config={"model_type": "llama"})
    with pytest.raises(ValueError, match="extra"):
        BackboneSpec(source="x", dtyp="float32")


def test_the_fingerprint_covers_the_config_that_changes_the_computation():
    """Equal weights with a different rope_theta compute a different function: an expert trained on one
    backbone is wrong on the other, so their fingerprints differ. Runtime choices (attention kernel,
    dtype) and token ids do not change the fingerprint."""
    base = load_backbone(tiny_spec("llama"))
    other_rope = load_backbone(tiny_spec("llama", rope_theta=500000.0))
    assert all(torch.equal(a, b) for a, b in zip(base.model.parameters(), other_rope.model.parameters()))
    assert other_rope.fingerprint != base.fingerprint
    assert load_backbone(tiny_spec("llama", rms_norm_eps=1e-5)).fingerprint != base.fingerprint
    same = tiny_spec("llama", eos_token_id=2).model_copy(update={"attn_implementation": "eager", "dtype": "bfloat16"})
    assert load_backbone(same).fingerprint == base.fingerprint
