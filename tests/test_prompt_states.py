import pytest
import torch
from transformers import DynamicCache

from ccoe.config import LayerSelection
from ccoe.expert import create_expert
from ccoe.generation import generate, left_pad
from ccoe.manifest import PLANNER_DOMAIN
from ccoe.planning import Plan, PlanStep, StepTool, execute_plans, plan_queries, planning_setup, shared_states
from ccoe.prompt_states import PromptStates, prefill_with_states
from tests.conftest import perturb

PROMPTS = [[5, 6, 7], [11, 12], [20, 21, 22, 23, 24, 25], [30, 31, 32, 33]]


@pytest.fixture
def top_model(model):
    """Three experts on the top two of four layers: layers 0-1 are shared by all of them."""
    for seed, (name, domain) in enumerate([("a", "math"), ("b", "law"), ("p", PLANNER_DOMAIN)], 1):
        model.push_expert(perturb(create_expert(model.backbone, name, domain, LayerSelection(strategy="top", k=2)), scale=0.3, seed=seed))
    return model


def _recorded(model, prompts, suffix=(40, 41, 42)):
    """States of `prompts` recorded by a planner-like call: each prompt followed by `suffix` tokens."""
    states = PromptStates(layer=2)
    ids, mask = left_pad([p + list(suffix) for p in prompts], pad_token_id=0)
    generate(model, ids, mask, expert="p", max_new_tokens=2, prompt_states=states, record_lengths=[len(p) for p in prompts])
    return states


def _layer0_rows(model):
    seen = []
    handle = model.lm.model.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    return seen, handle


def test_reused_states_give_the_fresh_prefill_and_skip_the_shared_layers(top_model, arch):
    """Prompts recorded under the planner (with other tokens after them, in another batch) and reused
    under experts: the same greedy tokens as a fresh run, and layer 0 runs only for the decode steps
    (one token a row) and for the prompt that was not recorded."""
    states = _recorded(top_model, PROMPTS[:3])
    kept = len(states)
    prompts, routes = [PROMPTS[2], PROMPTS[3], PROMPTS[0], PROMPTS[1]], ["a", "b", None, "a"]
    ids, mask = left_pad(prompts, pad_token_id=0)
    seen, handle = _layer0_rows(top_model)
    try:
        reused = generate(top_model, ids, mask, expert_ids=routes, max_new_tokens=5, prompt_states=states)
    finally:
        handle.remove()
    fresh = generate(top_model, ids, mask, expert_ids=routes, max_new_tokens=5)
    assert reused.tolist() == fresh.tolist()
    if arch == "gemma3_text":  # a 4-token sliding window below layer 2: a prefill of 6 + 3 tokens keeps no full state
        assert kept == 0 and states.hits == 0
        return
    assert kept == 3 and states.hits == 3
    assert seen[0] == torch.Size([1, ids.shape[1], top_model.backbone.config.hidden_size])  # only the unrecorded prompt
    assert all(shape[1] == 1 for shape in seen[1:])


def test_a_reused_prefill_leaves_logits_and_cache_as_a_plain_one(top_model, arch):
    states = _recorded(top_model, PROMPTS[:2])
    if arch == "gemma3_text":  # the window (4) is shorter than the recorded prefill (3 + 3 tokens): nothing kept
        assert len(states) == 0
        return
    ids, mask = left_pad([PROMPTS[0], PROMPTS[3], PROMPTS[1]], pad_token_id=0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    routes = ["a", None, "b"]
    found = states.lookup(ids, mask)
    assert [state is not None for state in found] == [True, False, True]
    caches = [DynamicCache(config=top_model.backbone.config) for _ in range(2)]
    with torch.no_grad():
        reused = prefill_with_states(top_model, ids, mask, positions, routes, caches[0], found, states.layer)
        plain = top_model(ids, mask, expert_ids=routes, past_key_values=caches[1], position_ids=positions, logits_to_keep=1)
    torch.testing.assert_close(reused.logits, plain.logits, atol=1e-5, rtol=1e-5)
    real = mask.bool()
    for mine, theirs in zip(caches[0].layers, caches[1].layers):  # padding positions differ (zeros vs garbage), masked anyway
        torch.testing.assert_close(mine.keys.transpose(1, 2)[real], theirs.keys.transpose(1, 2)[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.values.transpose(1, 2)[real], theirs.values.transpose(1, 2)[real], atol=1e-5, rtol=1e-5)


def test_states_are_used_only_below_every_expert_of_the_batch(top_model):
    low = perturb(create_expert(top_model.backbone, "low", "sql", [1, 3]), scale=0.3, seed=9)
    top_model.push_expert(low)
    states = _recorded(top_model, PROMPTS[:1])
    ids = torch.tensor([PROMPTS[0]])
    reused = generate(top_model, ids, expert="low", max_new_tokens=4, prompt_states=states)
    assert states.hits == 0  # layer 1 is the expert's: the recorded state (entering layer 2) does not apply
    assert reused.tolist() == generate(top_model, ids, expert="low", max_new_tokens=4).tolist()
    with pytest.raises(ValueError, match="above the lowest expert layer"):
        top_model(ids, expert="low", hidden_states=torch.zeros(1, 3, top_model.backbone.config.hidden_size), start=2)


def test_a_full_store_records_no_more():
    from ccoe.prompt_states import PromptState

    state = PromptState(torch.zeros(3, 4), (torch.zeros(2, 3, 2),), (torch.zeros(2, 3, 2),))
    store = PromptStates(layer=1, max_bytes=state.num_bytes() + 1)
    assert store.put([1, 2, 3], state) and not store.put([4, 5, 6], state)
    assert len(store) == 1 and store.num_bytes == state.num_bytes() and store.get([4, 5, 6]) is None
    with pytest.raises(ValueError, match="shared layer"):
        PromptStates(layer=0)


def test_one_step_plans_reuse_the_planners_pass_and_answer_as_without(top_model, local_backbone_dir):
    """plan_queries records the queries' states; execute_plans reuses them for the steps whose prompt is
    the whole query (task None) and not for framed tasks; answers equal a run without states."""
    from ccoe.backbone import load_backbone
    from ccoe.config import BackboneSpec
    from ccoe.model import CCoEModel

    model = CCoEModel(load_backbone(BackboneSpec(source=str(local_backbone_dir))))
    for seed, (name, domain) in enumerate([("m", "math"), ("s", "sql"), ("p", PLANNER_DOMAIN)], 1):
        model.push_expert(perturb(create_expert(model.backbone, name, domain, LayerSelection(strategy="top", k=2)), scale=0.3, seed=seed))
    tokenizer = model.backbone.tokenizer
    setup = planning_setup({"m": "math", "s": "sql", "p": PLANNER_DOMAIN}, {"m": {"math": 1.0}, "s": {"sql": 1.0}, "p": {PLANNER_DOMAIN: 1.0}},
                           max_new_tokens=4)
    queries = ["what is two plus three", "sql query law", "sum of five"]
    states = shared_states(model, ["p", "m", "s"])
    assert states is not None and states.layer == 2
    plans = plan_queries(model, tokenizer, queries, setup, route=lambda q: ("math", "m"), states=states)
    assert len(states) == 3
    given = [plans[0], Plan((PlanStep("sql", "s", None),)), Plan((PlanStep("math", "m", "sum of {0}".replace("{0}", "two")),))]
    tools = {"math": StepTool(max_new_tokens=5), "sql": StepTool(max_new_tokens=5)}
    with_states = execute_plans(model, tokenizer, queries, given, tools, states=states)
    assert states.hits == 2  # the two whole-query steps; the framed task "sum of two" is not a recorded prompt
    assert with_states == execute_plans(model, tokenizer, queries, given, tools)
    assert shared_states(model, [None]) is None and shared_states(model, ["p", None]).layer == 2


def test_sliding_window_layers_reuse_states_of_prompts_inside_their_window():
    """Gemma 3's sliding layers (window 4 here) keep a whole state when the prefill fits the window:
    recorded from 2 + 1 tokens, reused for 1-2 token prompts, with logits, cache and tokens as a plain run."""
    from ccoe.backbone import load_backbone
    from ccoe.model import CCoEModel
    from tests.conftest import tiny_spec

    model = CCoEModel(load_backbone(tiny_spec("gemma3_text")))
    for seed, name in enumerate(("a", "p"), 1):
        model.push_expert(perturb(create_expert(model.backbone, name, "math", LayerSelection(strategy="top", k=2)), scale=0.3, seed=seed))
    prompts = [[5, 6], [7]]
    states = _recorded(model, prompts, suffix=(40,))
    assert len(states) == 2
    ids, mask = left_pad(prompts, pad_token_id=0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    caches = [DynamicCache(config=model.backbone.config) for _ in range(2)]
    with torch.no_grad():
        reused = prefill_with_states(model, ids, mask, positions, ["a", None], caches[0], states.lookup(ids, mask), states.layer)
        plain = model(ids, mask, expert_ids=["a", None], past_key_values=caches[1], position_ids=positions, logits_to_keep=1)
    torch.testing.assert_close(reused.logits, plain.logits, atol=1e-5, rtol=1e-5)
    real = mask.bool()
    for mine, theirs in zip(caches[0].layers, caches[1].layers):
        assert mine.is_sliding == theirs.is_sliding and mine.get_seq_length() == theirs.get_seq_length()
        torch.testing.assert_close(mine.keys.transpose(1, 2)[real], theirs.keys.transpose(1, 2)[real], atol=1e-5, rtol=1e-5)
    assert any(layer.is_sliding for layer in caches[0].layers[: states.layer])
    fresh = generate(model, ids, mask, expert_ids=["a", None], max_new_tokens=5)
    assert generate(model, ids, mask, expert_ids=["a", None], max_new_tokens=5, prompt_states=states).tolist() == fresh.tolist()
    assert states.hits == 4  # both rows looked up above, and both again in generate
