"""The LoRA baseline of the expert-vs-LoRA comparison is scored through the same route machinery as experts."""

import copy

import torch

from benchmarks.bench_lora import train_lora
from benchmarks.domain_report import ReportSpec
from ccoe.backbone import load_backbone
from ccoe.config import DataSpec
from ccoe.model import CCoEModel

TINY = {
    "model": {"backbone": {"source": "config", "tokenizer": "smollm2-135m-instruct", "config": {
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2}}, "experts": []},
    "training": {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 1, "log_every_n_steps": 2},
    "max_length": 48,
    "eval": {},
}


def test_a_merged_lora_is_a_route_with_the_same_logits_as_the_plain_merged_model():
    spec = ReportSpec.model_validate(TINY)
    backbone = load_backbone(spec.model.backbone)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    # 5 rows in batches of 2: an epoch is 2 batches, so the 4 steps run into a second epoch
    data = DataSpec(records=[{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(5)], max_length=48, val_fraction=0.0)
    lora, adapter_bytes, _ = train_lora(backbone, data, spec, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())  # the backbone is untouched
    # r=16 on q,k,v,o (32x32, 32x16, 32x16, 32x32) and gate,up,down (32x64, 32x64, 64x32): 8192 params per layer, fp32
    assert adapter_bytes == 4 * 8192 * 4 and lora.layer_indices == (0, 1, 2, 3)
    model = CCoEModel(backbone)
    model.push_expert(lora)
    plain = copy.deepcopy(backbone.model)
    for i in range(4):
        plain.model.layers[i] = lora.layer(i)
    ids = torch.tensor([backbone.tokenizer("question 3")["input_ids"]])
    with torch.no_grad():
        routed, merged, base = model(ids, expert="lora").logits, plain(ids).logits, model(ids).logits
    assert torch.allclose(routed, merged, atol=1e-6) and not torch.allclose(routed, base, atol=1e-3)
