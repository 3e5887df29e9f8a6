"""ccoe.training: the loss, the prefix cache, the schedule and the resumable data order."""

import pytest
import torch

from ccoe.backbone import load_backbone
from ccoe.config import LayerSelection
from ccoe.data import IGNORE_INDEX, MAX_CHOICES, collate_choices
from ccoe.expert import create_expert
from ccoe.model import CCoEModel
from ccoe.training import PrefixCache, StepSeededBatchSampler, expert_choice_loss, expert_lm_loss, warmup_cosine
from tests.conftest import perturb, tiny_spec


def _batch(rows=4, width=9):
    ids = torch.randint(3, 97, (rows, width))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.arange(rows)}


def test_loss_equals_full_logits_cross_entropy(model):
    model.push_expert(perturb(create_expert(model.backbone, "e", "d", LayerSelection(strategy="global", k=2))))
    batch = _batch()
    loss, count = expert_lm_loss(model, batch, "e")
    logits = model(batch["input_ids"], batch["attention_mask"], expert="e").logits
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    assert count == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_prefix_cache_reproduces_the_loss_and_respects_its_budget(model):
    model.push_expert(perturb(create_expert(model.backbone, "e", "d", LayerSelection(strategy="top", k=1))))
    batch = _batch()
    cache = PrefixCache(budget_bytes=10**8)
    first, _ = expert_lm_loss(model, batch, "e", cache)
    assert len(cache) == 4 and (cache.hits, cache.misses) == (0, 4)
    second, _ = expert_lm_loss(model, batch, "e", cache)
    assert (cache.hits, cache.misses) == (4, 4)
    assert torch.equal(first, second)
    row_bytes = 32 * 4  # one position of hidden size 32 in float32; each example is stored at its own length
    small = PrefixCache(budget_bytes=18 * row_bytes)
    expert_lm_loss(model, batch, "e", small)
    assert len(small) == 2 and small.used_bytes == (9 + 6) * row_bytes  # the third (9 positions) did not fit


def _loss_and_grads(model, batch, cache):
    loss, _ = expert_lm_loss(model, batch, "e", cache)
    loss.backward()
    grads = [p.grad.clone() for p in model.experts["e"].parameters()]
    model.experts["e"].zero_grad(set_to_none=True)
    return [loss.detach(), *grads]


def test_a_cache_hit_is_bit_identical_to_a_fresh_prefix_whatever_batch_filled_it():
    """What makes a resumed run exact: it starts with an empty cache, so every example it sees again is
    computed fresh in its current batch, where an uninterrupted run read it from the cache, computed in
    the batch of an earlier epoch (another padded width)."""
    backbone = load_backbone(tiny_spec("llama", hidden_size=128, intermediate_size=256, max_position_embeddings=256))
    model = CCoEModel(backbone)
    model.push_expert(perturb(create_expert(backbone, "e", "d", LayerSelection(strategy="top", k=1))))
    generator = torch.Generator().manual_seed(0)
    lengths = [96, 41, 70, 23]
    wide = _batch(rows=4, width=96)
    wide["input_ids"] = torch.randint(3, 97, (4, 96), generator=generator)
    wide["attention_mask"] = (torch.arange(96) < torch.tensor(lengths)[:, None]).long()
    wide["labels"] = torch.where(wide["attention_mask"].bool(), wide["input_ids"], IGNORE_INDEX)
    narrow = {k: v[[1, 3]] if k == "index" else v[[1, 3], :41] for k, v in wide.items()}

    warm = PrefixCache(budget_bytes=10**8)
    expert_lm_loss(model, wide, "e", warm)
    from_cache = _loss_and_grads(model, narrow, warm)
    assert warm.hits == 2
    fresh = _loss_and_grads(model, narrow, PrefixCache(budget_bytes=10**8))
    assert all(torch.equal(a, b) for a, b in zip(from_cache, fresh))


def test_loss_gradients_reach_only_the_expert(model):
    model.push_expert(create_expert(model.backbone, "e", "d", [1, 3]))
    loss, _ = expert_lm_loss(model, _batch(), "e")
    loss.backward()
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(p.grad is not None for p in model.experts["e"].parameters())


def test_warmup_cosine_schedule():
    values = [warmup_cosine(s, warmup_steps=4, max_steps=20, min_ratio=0.1) for s in range(21)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert abs(values[20] - 0.1) < 1e-9 and all(a >= b for a, b in zip(values[4:], values[5:]))


def test_sampler_resumes_exactly_and_shards_across_ranks():
    full = StepSeededBatchSampler(22, 4, seed=3)
    assert len(full) == 5
    epochs = [list(iter(full)) for _ in range(3)]
    assert epochs[0] != epochs[1]
    resumed = StepSeededBatchSampler(22, 4, seed=3, start_batch=7)
    assert list(iter(resumed)) == epochs[1][2:] and list(iter(resumed)) == epochs[2]
    ranks = [list(iter(StepSeededBatchSampler(22, 4, seed=3, rank=r, world_size=2))) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    seen = [i for batches in ranks for b in batches for i in b]
    assert len(seen) == len(set(seen))


def _choice_items():
    """Two multiple-choice examples as `encode_with_choices` makes them: 3 and 2 options of 1-3 tokens."""
    return [
        {"choice": {"prompt": [5, 6, 7, 8], "options": [[20, 21, 22], [12, 13], [30]], "answer": 1}, "index": 0},
        {"choice": {"prompt": [9, 10, 11], "options": [[40], [41, 42]], "answer": 0}, "index": 1},
    ]


def _choice_reference(model, items, *, scale, lm_weight):
    """The choice loss from full forward passes, one (prompt + option) sequence at a time, as the scorer
    runs them: (loss, (B, K) scaled score table, right options' mean NLL, their token count)."""
    tables, nll, tokens = [], 0.0, 0
    width = max(len(item["choice"]["options"]) for item in items)
    with torch.no_grad():
        for item in items:
            means, prompt = [], item["choice"]["prompt"]
            for number, option in enumerate(item["choice"]["options"]):
                logprobs = model(torch.tensor([prompt + option]), expert="e").logits[0, len(prompt) - 1 : -1].log_softmax(-1)
                picked = logprobs.gather(1, torch.tensor(option).unsqueeze(1))
                means.append(float(picked.mean()))
                if number == item["choice"]["answer"]:
                    nll, tokens = nll - float(picked.sum()), tokens + picked.numel()
            tables.append(torch.tensor(means + [float("-inf")] * (width - len(means))))
    table = scale * torch.stack(tables)
    answer = torch.tensor([item["choice"]["answer"] for item in items])
    return torch.nn.functional.cross_entropy(table, answer) + lm_weight * nll / tokens, table, torch.tensor(nll / tokens), tokens


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_choice_rows_keep_sliding_windows_and_eager_attention_exact(attention):
    """A packed row must mask what separate sequences mask: with a window of 4 positions and a 9-token
    prompt, an option token may not see the prompt's start, in the packed row as alone."""
    spec = tiny_spec("mistral", sliding_window=4).model_copy(update={"attn_implementation": attention})
    model = CCoEModel(load_backbone(spec))
    model.push_expert(perturb(create_expert(model.backbone, "e", "d", LayerSelection(strategy="global", k=2))))
    items = [{"choice": {"prompt": list(range(5, 14)), "options": [[20, 21, 22], [30, 31]], "answer": 1}, "index": 0},
             {"choice": {"prompt": [9, 10], "options": [[40], [41, 42], [43]], "answer": 2}, "index": 1}]
    result = expert_choice_loss(model, collate_choices(items, pad_token_id=0), "e", scale=2.0, lm_weight=1.0)
    reference, *_ = _choice_reference(model, items, scale=2.0, lm_weight=1.0)
    torch.testing.assert_close(result.loss.detach(), reference, atol=1e-5, rtol=1e-5)


def test_choice_loss_ranks_options_by_the_scorers_length_normalised_likelihood(model):
    """The objective's scores are each option's mean token log-likelihood under the expert (what
    `evaluate_domain` ranks by), computed here from full forward passes one option at a time."""
    model.push_expert(perturb(create_expert(model.backbone, "e", "d", LayerSelection(strategy="top", k=1))))
    items = _choice_items()
    batch = collate_choices(items, pad_token_id=0)
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8, 20, 21, 22, 12, 13, 30]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 5, 4]
    assert batch["input_ids"][1].tolist()[:6] == [9, 10, 11, 40, 41, 42] and batch["attention_mask"].sum(1).tolist() == [10, 6]
    assert batch["choice_mask"][0, 0, 7].tolist() == [True] * 4 + [False] * 3 + [True] + [False] * 2  # option 2 sees the prompt and itself
    assert batch["owner"].tolist() == [0, 0, 0, 1, 1, 2, MAX_CHOICES, MAX_CHOICES + 1, MAX_CHOICES + 1]
    result = expert_choice_loss(model, batch, "e", scale=3.0, lm_weight=0.5)
    reference, table, lm, tokens = _choice_reference(model, items, scale=3.0, lm_weight=0.5)
    torch.testing.assert_close(result.loss.detach(), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.lm.detach(), lm, atol=1e-5, rtol=1e-5)
    assert result.tokens == tokens == 2 + 1  # EOS is not in these hand-made rows
    assert result.accuracy == float((table.argmax(1) == torch.tensor([1, 0])).float().mean())
    cached = expert_choice_loss(model, batch, "e", PrefixCache(10**8), scale=3.0, lm_weight=0.5)
    torch.testing.assert_close(cached.loss, result.loss, atol=1e-5, rtol=1e-5)


def test_choice_loss_gradients_reach_only_the_expert_and_raise_the_right_option(llama_backbone):
    model = CCoEModel(llama_backbone)
    model.push_expert(create_expert(llama_backbone, "e", "d", LayerSelection(strategy="top", k=2)))
    batch = collate_choices(_choice_items(), pad_token_id=0)
    optimizer = torch.optim.AdamW(model.experts["e"].parameters(), lr=3e-3)
    first = expert_choice_loss(model, batch, "e")
    for _ in range(30):
        loss = expert_choice_loss(model, batch, "e").loss
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.lm.parameters())
        optimizer.step()
    last = expert_choice_loss(model, batch, "e")
    assert float(last.loss.detach()) < float(first.loss.detach()) - 0.5
    assert last.accuracy == 1.0
