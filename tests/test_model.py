"""Contracts of CCoEModel: equivalence to swapped backbones, mixed batches, pop-and-push isolation."""

import copy
import gc
import weakref

import pytest
import torch

from ccoe.backbone import load_backbone
from ccoe.config import LayerSelection
from ccoe.expert import create_expert
from ccoe.model import CCoEModel
from tests.conftest import backbone_bytes, perturb, tiny_spec


def _with_experts(model):
    model.push_expert(perturb(create_expert(model.backbone, "a", "math", LayerSelection(strategy="top", k=2)), seed=1))
    model.push_expert(perturb(create_expert(model.backbone, "b", "law", LayerSelection(strategy="global", k=2)), seed=2))
    model.push_expert(perturb(create_expert(model.backbone, "c", "code", [0]), seed=3))
    return model


def _swapped(backbone, expert):
    reference = copy.deepcopy(backbone.model)
    for i in expert.layer_indices:
        reference.model.layers[i] = expert.layer(i)
    return reference


def test_no_expert_equals_the_backbone_forward(model):
    ids = torch.randint(0, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    assert torch.equal(model(ids, mask).logits, model.backbone.model(ids, attention_mask=mask).logits)


def test_expert_forward_equals_a_backbone_with_swapped_layers(model):
    _with_experts(model)
    ids = torch.randint(0, 97, (2, 7))
    for name in ("a", "b", "c"):
        expected = _swapped(model.backbone, model.experts[name])(ids).logits
        assert torch.equal(model(ids, expert=name).logits, expected)
    assert not torch.equal(model(ids, expert="a").logits, model(ids).logits)


def test_mixed_batch_equals_per_expert_runs(model):
    _with_experts(model)
    routes = ["a", None, "b", "a", "c", None]
    ids = torch.randint(0, 97, (len(routes), 8))
    mask = torch.ones_like(ids)
    mask[2, :3] = 0
    mixed = model(ids, mask, expert_ids=routes).logits
    for row, name in enumerate(routes):
        alone = model(ids[row : row + 1], mask[row : row + 1], expert=name).logits[0]
        torch.testing.assert_close(mixed[row], alone, atol=1e-5, rtol=0)


def test_mixed_batch_runs_untouched_layers_once(model):
    _with_experts(model)
    rows = {i: [] for i in range(model.num_layers)}  # batch size of every call of each backbone layer
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: rows[i].append(o.shape[0]))
             for i, layer in enumerate(model.lm.model.layers)]
    model(torch.randint(0, 97, (4, 5)), expert_ids=["a", "a", None, "a"])
    for hook in hooks:
        hook.remove()
    owned = set(model.experts["a"].layer_indices)
    assert owned and owned != set(range(model.num_layers))
    for i in range(model.num_layers):  # untouched layers: one call on all 4 rows; owned: one call on the backbone row only
        assert rows[i] == ([1] if i in owned else [4]), (i, rows[i])


def test_forward_many_shares_the_prefix_and_matches_single_runs(model):
    _with_experts(model)
    ids = torch.randint(0, 97, (2, 6))
    names = ["a", "b", None]
    assert model.split_layer(["a", "b"]) == min(model.experts["b"].layer_indices)
    many = model.forward_many(ids, experts=names)
    for name in names:
        assert torch.equal(many[name], model(ids, expert=name).logits)


def test_cached_prefix_hidden_states_reproduce_logits(model):
    _with_experts(model)
    ids = torch.randint(0, 97, (2, 6))
    split = model.split_layer(["a"])
    hidden = model.prefix_hidden_states(ids, stop=split)
    assert not hidden.requires_grad
    assert torch.equal(model.forward_from_hidden(hidden, start=split, expert="a"), model(ids, expert="a").logits)
    with pytest.raises(ValueError, match="above expert 'c'"):
        model.forward_from_hidden(hidden, start=split, expert="c")


def test_push_pop_leaves_other_experts_bit_identical(model):
    _with_experts(model)
    ids = torch.randint(0, 97, (2, 6))
    before = {n: model(ids, expert=n).logits for n in ("a", "b", None)}
    model.pop_expert("c")
    model.push_expert(perturb(create_expert(model.backbone, "c", "code", LayerSelection(strategy="top", k=3)), seed=9))
    model.push_expert(perturb(create_expert(model.backbone, "d", "sql", [1, 2]), seed=10))
    for name, logits in before.items():
        assert torch.equal(model(ids, expert=name).logits, logits)


def test_push_replaces_by_name_and_pop_frees_memory(model):
    _with_experts(model)
    ref = weakref.ref(model.experts["a"].layer(model.num_layers - 1).mlp.down_proj.weight)
    model.push_expert(create_expert(model.backbone, "a", "math", [1]))
    gc.collect()
    assert ref() is None
    assert model.experts["a"].layer_indices == (1,)
    ref = weakref.ref(model.experts["b"].layers)
    model.pop_expert("b")
    gc.collect()
    assert ref() is None and "b" not in model.expert_names()
    with pytest.raises(KeyError, match="no expert named 'b'"):
        model.pop_expert("b")


def test_foreign_fingerprint_is_refused(model):
    other = load_backbone(tiny_spec(model.backbone.config.model_type, seed=7))
    with pytest.raises(ValueError, match="made for backbone"):
        model.push_expert(create_expert(other, "x", "math", [0]))


def test_backbone_bytes_unchanged_by_every_operation(model):
    before = backbone_bytes(model)
    _with_experts(model)
    ids = torch.randint(0, 97, (3, 5))
    model.train()
    loss = model(ids, expert_ids=["a", "b", None]).logits.sum()
    loss.backward()
    with torch.no_grad():
        for p in model.experts.parameters():
            if p.grad is not None:
                p.sub_(p.grad)
    model.pop_expert("a")
    model.forward_many(ids, experts=["b", "c"])
    assert backbone_bytes(model) == before
    assert not model.lm.training


def test_gradients_reach_only_expert_parameters(model):
    _with_experts(model)
    model(torch.randint(0, 97, (2, 5)), expert="a").logits.sum().backward()
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(p.grad is not None for p in model.experts["a"].parameters())
    assert all(p.grad is None for p in model.experts["b"].parameters())


def test_routing_errors_are_clear(model):
    _with_experts(model)
    ids = torch.randint(0, 97, (2, 4))
    with pytest.raises(KeyError, match="no expert named 'zz'"):
        model(ids, expert="zz")
    with pytest.raises(ValueError, match="2 rows"):
        model(ids, expert_ids=["a"])
    with pytest.raises(ValueError, match="not both"):
        model(ids, expert="a", expert_ids=["a", "b"])


def test_mistral_sliding_window_mixed_batch():
    model = CCoEModel(load_backbone(tiny_spec("mistral", sliding_window=4)))
    _with_experts(model)
    ids = torch.randint(0, 97, (3, 10))
    assert torch.equal(model(ids).logits, model.backbone.model(ids).logits)
    mixed = model(ids, expert_ids=["b", "a", None]).logits
    for row, name in enumerate(["b", "a", None]):
        torch.testing.assert_close(mixed[row], model(ids[row : row + 1], expert=name).logits[0], atol=1e-5, rtol=0)
