"""Grouped layers (ccoe.grouped): one call per layer for a mixed-expert batch, same logits and cache."""

import gc
import weakref

import pytest
import torch
from transformers import DynamicCache

from ccoe.config import LayerSelection
from ccoe.expert import create_expert
from ccoe.grouped import GroupedLayer, layout_for
from ccoe.model import CCoEModel
from tests.conftest import perturb
from tests.test_model import _with_experts

ROUTES = ["a", None, "b", "a", "c", None]  # unsorted on purpose: tokens are reordered by group and back


def _prefill_and_step(model, ids, mask, routes):
    """Logits of a prefill and of one cached decode step, and the cache after both."""
    cache = DynamicCache(config=model.backbone.config)
    with torch.no_grad():
        first = model(ids, mask, expert_ids=routes, past_key_values=cache).logits
        token = first[:, -1:].argmax(-1)
        second = model(token, torch.cat([mask, torch.ones_like(token)], 1), expert_ids=routes, past_key_values=cache).logits
    return first, second, cache


def _inputs(length: int = 8):
    ids = torch.randint(0, 97, (len(ROUTES), length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if length > 3:
        mask[2, :3] = 0
    return ids, mask


def test_grouped_decode_step_equals_sub_batch_runs(model):
    _with_experts(model)
    ids, mask = _inputs()
    plain = _prefill_and_step(model, ids, mask, ROUTES)
    model.grouped_layers = True
    grouped = _prefill_and_step(model, ids, mask, ROUTES)
    assert model._stacks, "the decode step's mixed layers ran grouped"
    assert torch.equal(grouped[0], plain[0])  # prefill keeps a call per expert sub-batch
    # decode: attention runs on the whole batch instead of per sub-batch; float rounding only
    torch.testing.assert_close(grouped[1], plain[1], atol=1e-5, rtol=0)
    for layer_plain, layer_grouped in zip(plain[2].layers, grouped[2].layers):
        torch.testing.assert_close(layer_grouped.keys, layer_plain.keys, atol=1e-5, rtol=0)
        torch.testing.assert_close(layer_grouped.values, layer_plain.values, atol=1e-5, rtol=0)


def test_grouped_rows_equal_each_row_alone(model):
    _with_experts(model)
    model.grouped_layers = True
    ids, mask = _inputs(length=1)  # one token a row: the step shape that runs grouped
    with torch.no_grad():
        mixed = model(ids, mask, expert_ids=ROUTES).logits
        assert model._stacks
        for row, name in enumerate(ROUTES):
            alone = model(ids[row : row + 1], mask[row : row + 1], expert=name).logits[0]
            torch.testing.assert_close(mixed[row], alone, atol=1e-5, rtol=0)


def test_a_mixed_layer_is_one_call_and_no_expert_layer_runs(model):
    _with_experts(model)
    model.grouped_layers = True
    calls = []
    hooks = [layer.register_forward_hook(lambda *a: calls.append("expert"))
             for e in model.experts.values() for layer in e.layers.values()]
    with torch.no_grad():
        model(torch.randint(0, 97, (4, 1)), expert_ids=["a", "b", None, "c"])
    assert calls == []
    owned = {i for e in model.experts.values() for i in e.layer_indices}
    assert set(model._stacks) == owned
    for hook in hooks:
        hook.remove()


def test_training_never_uses_stacks(model):
    _with_experts(model)
    model.grouped_layers = True
    ids, _ = _inputs(length=1)
    model(ids, expert_ids=ROUTES).logits.sum().backward()
    assert model._stacks == {}
    assert model.experts["a"].layer(model.num_layers - 1).mlp.down_proj.weight.grad is not None


def test_in_place_weight_change_rebuilds_the_stack(llama_backbone):
    model = _with_experts(CCoEModel(llama_backbone, grouped_layers=True))
    ids, mask = _inputs(length=1)
    with torch.no_grad():
        before = model(ids, mask, expert_ids=ROUTES).logits
        perturb(model.experts["a"], seed=7)  # in place, like an optimizer step
        after = model(ids, mask, expert_ids=ROUTES).logits
        model.grouped_layers = False
        expected = model(ids, mask, expert_ids=ROUTES).logits
    assert (after - before).abs().max() > 1e-3  # the stale stack would have given `before`
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=0)


def test_pop_and_push_drop_stacks_and_free_the_expert(llama_backbone):
    model = _with_experts(CCoEModel(llama_backbone, grouped_layers=True))
    ids, mask = _inputs(length=1)
    with torch.no_grad():
        model(ids, mask, expert_ids=ROUTES)
        assert model.stack_bytes() > 0
        ref = weakref.ref(model.experts["c"].layers)
        model.pop_expert("c")
        gc.collect()
        assert ref() is None and 0 not in model._stacks and model._stacks  # only the popped depth is dropped
        routes = [r if r != "c" else "d" for r in ROUTES]
        model.push_expert(perturb(create_expert(model.backbone, "d", "sql", LayerSelection(strategy="top", k=1)), seed=5))
        grouped = model(ids, mask, expert_ids=routes).logits
        model.grouped_layers = False
        torch.testing.assert_close(grouped, model(ids, mask, expert_ids=routes).logits, atol=1e-5, rtol=0)


def test_layout_orders_tokens_by_group_and_back():
    layout = layout_for(torch.tensor([2, 0, 2, 1]), groups=4, tokens_per_row=3)
    assert layout.offsets.tolist() == [3, 6, 12, 12]  # group 3 absent: an empty group
    assert layout.order.tolist() == [3, 4, 5, 9, 10, 11, 0, 1, 2, 6, 7, 8]
    assert torch.equal(layout.order[layout.inverse], torch.arange(12))
    assert layout.token_group.tolist() == [0] * 3 + [1] * 3 + [2] * 6
    assert layout_for(torch.tensor([0, 0, 1]), groups=2, tokens_per_row=2).order is None


def test_modules_of_different_shapes_are_refused(llama_backbone):
    layers = llama_backbone.model.model.layers
    with pytest.raises(ValueError, match="one structure"):
        GroupedLayer([layers[0]])
    with pytest.raises(ValueError, match="one structure"):
        GroupedLayer([layers[0].mlp, torch.nn.Sequential(torch.nn.Linear(32, 7))])
    with pytest.raises(ValueError, match="one structure"):  # parameters on the layer itself
        GroupedLayer([torch.nn.Linear(32, 7), torch.nn.Linear(32, 7)])


def test_bfloat16_step_matches_sub_batches():
    from ccoe.backbone import load_backbone
    from tests.conftest import tiny_spec

    model = _with_experts(CCoEModel(load_backbone(tiny_spec("llama").model_copy(update={"dtype": "bfloat16"}))))
    ids, mask = _inputs(length=1)
    with torch.no_grad():
        plain = model(ids, mask, expert_ids=ROUTES).logits
        model.grouped_layers = True
        grouped = model(ids, mask, expert_ids=ROUTES).logits
    assert grouped.dtype == torch.bfloat16 and model._stacks
    torch.testing.assert_close(grouped, plain, atol=2e-2, rtol=0)  # bf16 keeps ~3 significant digits
