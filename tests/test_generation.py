import pytest
import torch

from ccoe.config import LayerSelection
from ccoe.expert import create_expert
from ccoe.generation import generate, left_pad, select_next_token
from tests.conftest import perturb


@pytest.fixture
def experts_model(model):
    model.push_expert(perturb(create_expert(model.backbone, "a", "math", LayerSelection(strategy="top", k=2)), scale=0.3, seed=1))
    model.push_expert(perturb(create_expert(model.backbone, "b", "law", [0, 2]), scale=0.3, seed=2))
    return model


def test_greedy_matches_transformers_generate(model):
    ids = torch.randint(1, 97, (1, 7))
    ours = generate(model, ids, max_new_tokens=8, eos_token_id=model.backbone.config.eos_token_id)
    theirs = model.backbone.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[:, 7:]
    assert torch.equal(ours, theirs)


def test_mixed_padded_batch_equals_each_prompt_alone(experts_model):
    prompts = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22], [30, 31, 32, 33]]
    routes = ["b", "a", None, "a"]
    ids, mask = left_pad(prompts, pad_token_id=0)
    batched = generate(experts_model, ids, mask, expert_ids=routes, max_new_tokens=6)
    for row, (prompt, route) in enumerate(zip(prompts, routes)):
        alone = generate(experts_model, torch.tensor([prompt]), expert=route, max_new_tokens=6)
        assert batched[row].tolist() == alone[0].tolist()


def test_experts_change_the_continuation(experts_model):
    ids = torch.randint(1, 97, (1, 6))
    outs = {r: generate(experts_model, ids, expert=r, max_new_tokens=10)[0].tolist() for r in ("a", "b", None)}
    assert len({tuple(v) for v in outs.values()}) > 1


def test_eos_stops_and_pads(model):
    ids = torch.randint(1, 97, (2, 5))
    free = generate(model, ids, max_new_tokens=6)
    eos = int(free[0, 1])
    out = generate(model, ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=-1)
    first = (free[0] == eos).nonzero()[0].item()
    assert out[0, first].item() == eos and (out[0, first + 1 :] == -1).all()


def test_sampling_is_reproducible_with_a_generator(model):
    ids = torch.randint(1, 97, (2, 5))
    run = lambda seed: generate(model, ids, max_new_tokens=8, do_sample=True, temperature=1.5, top_k=20, top_p=0.9,
                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(select_next_token(logits, do_sample=True, top_k=2, generator=gen)) for _ in range(200)}
    assert picks <= {3, 4}
    picks = {int(select_next_token(logits * 10, do_sample=True, top_p=0.5, generator=gen)) for _ in range(50)}
    assert picks == {4}
    with pytest.raises(ValueError, match="temperature"):
        select_next_token(logits, do_sample=True, temperature=0)


def test_right_padding_is_refused(model):
    ids = torch.randint(1, 97, (2, 4))
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, mask, max_new_tokens=2)


def test_until_ends_a_row_early_and_keeps_what_it_had(experts_model):
    """A row whose new tokens satisfy `until` (asked every `check_every` steps) is padded from there
    on; what it generated before is what it generates without `until`, and other rows are untouched."""
    prompts = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22]]
    ids, mask = left_pad(prompts, pad_token_id=0)
    routes = ["a", None, "b"]
    free = generate(experts_model, ids, mask, expert_ids=routes, max_new_tokens=12, pad_token_id=-1)
    asked = []

    def until(tokens):
        asked.append(len(tokens))
        return tokens[:2] == free[0, :2].tolist()  # only the first row's start

    out = generate(experts_model, ids, mask, expert_ids=routes, max_new_tokens=12, pad_token_id=-1, until=until, check_every=4)
    assert out[0, :4].tolist() == free[0, :4].tolist() and (out[0, 4:] == -1).all()
    assert torch.equal(out[1:], free[1:])
    assert set(asked) == {4, 8, 12}


def test_a_prompt_under_several_experts_shares_its_prefill(experts_model):
    """Equal rows run the layers below the lowest expert layer once: same logits and KV cache as the
    plain forward (up to rounding), and the backbone's first layer sees only the distinct prompts."""
    from transformers import DynamicCache

    ids, mask = left_pad([[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [11, 12], [11, 12], [5, 6, 7, 8, 9]], pad_token_id=0)
    routes = [None, "a", "a", None, "a"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    seen = []
    hook = experts_model.lm.model.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        runs = {}
        for share in (False, True):
            cache = DynamicCache(config=experts_model.backbone.config)
            out = experts_model(ids, mask, expert_ids=routes, past_key_values=cache, position_ids=positions, share_equal_rows=share)
            runs[share] = (out.logits, cache)
    finally:
        hook.remove()
    assert seen == [5, 2]
    torch.testing.assert_close(runs[True][0], runs[False][0], atol=1e-5, rtol=1e-5)
    for plain, shared in zip(runs[False][1].layers, runs[True][1].layers):
        torch.testing.assert_close(shared.keys, plain.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shared.values, plain.values, atol=1e-5, rtol=1e-5)
    batched = generate(experts_model, ids, mask, expert_ids=routes, max_new_tokens=6)
    for row, route in enumerate(routes):
        alone = generate(experts_model, ids[row:row + 1, mask[row].bool()], expert=route, max_new_tokens=6)
        assert batched[row].tolist() == alone[0].tolist()
