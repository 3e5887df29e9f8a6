"""Held-out loss and task metrics per domain, for several routes (backbone, experts) at once.

Loss and multiple-choice scoring share work across routes: the backbone layers below the lowest
layer of any route run once (`prefix_hidden_states`), each route runs only its own remainder, and the
LM head runs only at supervised positions. Generation tasks put every (prompt, route) pair into one
mixed-expert batch, so shared layers run once per decoding step for all routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from ccoe.config import DataSpec
from ccoe.data import IGNORE_INDEX, MAX_CHOICES, Example, collate, collate_choices, encode_example, encode_with_choices
from ccoe.generation import generate_text
from ccoe.model import CCoEModel, Route


@dataclass(frozen=True)
class DomainScore:
    """One route's scores on one domain's items, kept per item so that two routes can be compared
    pairwise (ccoe.evidence). `metric` is None for a domain without a scorer (loss only).

    item_scores: (n,) 0/1 task score per item (empty when unscored); item_nll: (n,) summed NLL of
    the gold response; item_tokens: (n,) its token count, so loss = sum(item_nll) / sum(item_tokens);
    item_outputs: (n,) the generated text per item (generate tasks only: kept so a report can say why
    items failed, e.g. `CodeDomain.failure`).
    """

    domain: str
    route: Route
    loss: float
    metric: float | None
    num_items: int
    item_scores: tuple[float, ...] = ()
    item_nll: tuple[float, ...] = ()
    item_tokens: tuple[float, ...] = ()
    item_outputs: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"domain": self.domain, "route": self.route or "backbone", "loss": self.loss, "metric": self.metric, "n": self.num_items}


@torch.no_grad()
def sequence_logprobs(
    model: CCoEModel, tokenizer, pairs: Sequence[tuple[str, str]], routes: Sequence[Route], spec: DataSpec, batch_size: int = 8
) -> dict[Route, tuple[torch.Tensor, torch.Tensor]]:
    """Per pair and route: (sum of response-token log-probs, number of response tokens), each (N,)."""
    encoded = [encode_example(Example(p, r), tokenizer, spec) for p, r in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.lm.parameters()).device
    sums = {route: torch.zeros(len(pairs)) for route in routes}
    counts = torch.zeros(len(pairs))
    split = model.split_layer(list(routes))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))  # similar lengths batch together
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in rows], pad).items()}
        mask, targets = batch["attention_mask"], batch["labels"][:, 1:]
        supervised = targets != IGNORE_INDEX
        row_of = torch.arange(len(rows), device=device).unsqueeze(1).expand_as(targets)[supervised]
        counts[rows] = supervised.sum(dim=1).float().cpu()
        shared = model.prefix_hidden_states(batch["input_ids"], mask, stop=split)
        for route in routes:
            final = model.hidden_from(shared, mask, start=split, expert=route)
            logprobs = model.head(final[:, :-1][supervised]).float().log_softmax(dim=-1)
            picked = logprobs.gather(1, targets[supervised].unsqueeze(1)).squeeze(1)
            per_row = torch.zeros(len(rows), device=device).index_add_(0, row_of, picked)
            sums[route][rows] = per_row.cpu()
    return {route: (sums[route], counts) for route in routes}


@torch.no_grad()
def choice_logprobs(
    model: CCoEModel, tokenizer, items: Sequence[dict], routes: Sequence[Route], spec: DataSpec, batch_size: int = 8
) -> dict[Route, tuple[torch.Tensor, torch.Tensor]]:
    """Per route, (sums, counts): two (N, MAX_CHOICES) tables of each option's summed token
    log-likelihood after its item's prompt and its token count (EOS included; 0 past an item's last
    option). `choice_means` turns them into what the multiple-choice scorer ranks by (and the `choice`
    training objective trains); the gold option's entries are the gold response's NLL, so a choice
    domain needs no separate loss pass.

    The options of an item run as one packed row (`collate_choices`: the prompt once, each option
    attending to the prompt and itself), so 4 options cost about a third of 4 separate sequences; the
    layers below every route's lowest layer run once for all routes.
    """
    examples = [Example(it["prompt"], it["choices"][it["answer"]], tuple(it["choices"]), it["answer"]) for it in items]
    encoded = [encode_with_choices(ex, tokenizer, spec) for ex in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.lm.parameters()).device
    tables = {route: (torch.zeros(len(items), MAX_CHOICES), torch.zeros(len(items), MAX_CHOICES)) for route in routes}
    split = model.split_layer(list(routes))
    width = lambda e: len(e["choice"]["prompt"]) + sum(map(len, e["choice"]["options"]))  # noqa: E731
    order = sorted(range(len(encoded)), key=lambda i: width(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_choices([encoded[i] for i in rows], pad).items()}
        mask, positions = batch["choice_mask"], batch["position_ids"]
        counts = torch.bincount(batch["owner"], minlength=len(rows) * MAX_CHOICES)
        shared = model.prefix_hidden_states(batch["input_ids"], mask, stop=split, position_ids=positions)
        for route in routes:
            final = model.hidden_from(shared, mask, start=split, expert=route, position_ids=positions)
            logprobs = model.head(final.reshape(-1, final.shape[-1])[batch["predict"]]).float().log_softmax(dim=-1)
            picked = logprobs.gather(1, batch["target"].unsqueeze(1)).squeeze(1)
            sums = torch.zeros(len(rows) * MAX_CHOICES, device=device).index_add_(0, batch["owner"], picked)
            tables[route][0][rows] = sums.view(len(rows), MAX_CHOICES).cpu()
            tables[route][1][rows] = counts.view(len(rows), MAX_CHOICES).float().cpu()
    return tables


def choice_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(N, MAX_CHOICES) mean token log-likelihood per option, -inf past an item's last option."""
    return torch.where(counts > 0, sums / counts.clamp(min=1), float("-inf"))


def evaluate_loss(
    model: CCoEModel, tokenizer, name: str, items: Sequence[dict], routes: Sequence[Route], *, spec: DataSpec | None = None, batch_size: int = 8
) -> dict[Route, DomainScore]:
    """Held-out NLL of the gold responses (`items`: {prompt, response}) for every route; no task metric.
    What a domain without a scorer (a custom domain's validation split) is judged on."""
    if not items:
        raise ValueError(f"{name}: no held-out items to score")
    spec = spec or DataSpec(records=[], max_length=768)
    routes = list(dict.fromkeys(routes))
    gold = sequence_logprobs(model, tokenizer, [(it["prompt"], it["response"]) for it in items], routes, spec, batch_size)
    return {
        r: DomainScore(name, r, float(-(s.sum() / c.sum())), None, len(items), (), tuple((-s).tolist()), tuple(c.tolist()))
        for r, (s, c) in gold.items()
    }


def generation_batches(prompts: Sequence[str], routes: Sequence[Route], batch_size: int) -> list[list[tuple[int, int]]]:
    """The (item, route) rows of a domain's generation, as batches of near-equal size <= batch_size.

    Rows are ordered by prompt length, an item's routes next to each other, and the order is cut into
    ceil(rows / batch_size) even pieces. Why: on CPU (and on a GPU at these sizes) a decoding step
    costs about the same for 8 rows as for 32 (weight reads dominate: SmolLM2-135M, 83 vs 92 ms per
    step on 2 Xeon cores), so the fewest batches win; prompts of similar length pad less; and one
    prompt's routes in one batch share the prefill of the layers below the experts
    (`CCoEModel.forward(share_equal_rows=True)`). Grouping rows by route instead (an expert's rows
    tend to stop together) measured slower: the sql eval, 40 items x 2 routes, 89.5 s by route vs
    83.9 s by item. Returns, per batch, (item index, route index) pairs."""
    rows = sorted(((len(p), r, i) for i, p in enumerate(prompts) for r in range(len(routes))), key=lambda t: (t[0], t[2], t[1]))
    count = -(-len(rows) // batch_size)
    size = -(-len(rows) // count) if rows else 0
    return [[(i, r) for _, r, i in rows[start : start + size]] for start in range(0, len(rows), size)] if rows else []


def gold_choice_loss(name: str, route: Route, items: Sequence[dict], sums: torch.Tensor, counts: torch.Tensor) -> DomainScore:
    """A choice domain's held-out NLL read off its choice tables: the gold option is the gold response
    (the same tokens as `evaluate_loss` scores, unless `max_length` cuts the prompt: the packed row
    keeps the shortest cut of the options')."""
    gold = torch.tensor([int(it["answer"]) for it in items]).unsqueeze(1)
    nll, tokens = -sums.gather(1, gold).squeeze(1), counts.gather(1, gold).squeeze(1)
    return DomainScore(name, route, float(nll.sum() / tokens.sum()), None, len(items), (), tuple(nll.tolist()), tuple(tokens.tolist()))


def evaluate_domain(
    model: CCoEModel,
    tokenizer,
    domain,
    items: Sequence[dict],
    routes: Sequence[Route],
    *,
    spec: DataSpec | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    generation_batch_size: int = 32,
    progress: bool = False,
) -> dict[Route, DomainScore]:
    """Loss on the gold responses and the domain's task metric, per item and in total, for every route.
    `batch_size` rows per scoring forward (compute-bound: the size barely matters); up to
    `generation_batch_size` (prompt, route) rows per generation (see `generation_batches`)."""
    spec = spec or DataSpec(records=[], max_length=768)
    routes = list(dict.fromkeys(routes))
    per_item: dict[Route, list[float]]
    texts: dict[Route, list[str]] = {r: [] for r in routes}  # generated texts: none for a choice domain
    if domain.task == "choice":
        tables = choice_logprobs(model, tokenizer, items, routes, spec, batch_size)
        if all(it["response"] == it["choices"][it["answer"]] for it in items):
            losses = {route: gold_choice_loss(domain.name, route, items, *table) for route, table in tables.items()}
        else:
            losses = evaluate_loss(model, tokenizer, domain.name, items, routes, spec=spec, batch_size=batch_size)
        per_item = {route: [domain.score(item, int(row.argmax())) for item, row in zip(items, choice_means(*table))]
                    for route, table in tables.items()}
    else:
        losses = evaluate_loss(model, tokenizer, domain.name, items, routes, spec=spec, batch_size=batch_size)
        per_item, texts = {r: [0.0] * len(items) for r in routes}, {r: [""] * len(items) for r in routes}
        for rows in tqdm(generation_batches([it["prompt"] for it in items], routes, generation_batch_size),
                         desc=f"generate {domain.name}", disable=not progress):
            outputs = generate_text(model, tokenizer, [items[i]["prompt"] for i, _ in rows], [routes[r] for _, r in rows],
                                    max_new_tokens=max_new_tokens, use_chat_template=spec.use_chat_template, until=domain.complete)
            for (i, r), completion in zip(rows, outputs):
                per_item[routes[r]][i] = domain.score(items[i], completion.text)
                texts[routes[r]][i] = completion.text
    return {r: replace(losses[r], metric=sum(per_item[r]) / len(items), item_scores=tuple(per_item[r]), item_outputs=tuple(texts[r]))
            for r in routes}
