"""Autoregressive generation with a KV cache over mixed-expert batches.

Rows are reordered once so that rows of the same expert are contiguous: every expert sub-batch is
then a slice (a view) of the batch and of the KV cache, with no gathers per step. Layers no expert
owns run once per step for the whole batch; expert layers run per contiguous sub-batch.

Prompts are left-padded (B, T) with an attention mask; positions come from the mask so padded rows
get the same positions (and logits) as they would alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ccoe.data import encode_prompt
from ccoe.model import CCoEModel, Route
from ccoe.prompt_states import PromptStates, prefill_with_states, reusable


class DecodingTool(Protocol):
    """Writes tokens into a row while it decodes (e.g. `ccoe.calculator.Calculator`): after a row's
    newest token is one of `triggers`, `tool(new_tokens)` gives the token ids to write next, in place
    of the model's choices (empty: none). The model still reads every written token, so the KV cache
    and the rest of the row are exactly as if the model had chosen them."""

    triggers: frozenset[int]

    def __call__(self, tokens: list[int]) -> list[int]: ...


def _check_left_padded(attention_mask: torch.Tensor) -> None:
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("prompts must be left-padded (the last column of attention_mask must be all ones)")


def select_next_token(
    logits: torch.Tensor,
    *,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): argmax, or sampling with temperature/top-k/top-p."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    scores = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_scores.softmax(dim=-1) > top_p  # keep the smallest prefix reaching top_p
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: CCoEModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    expert: Route = None,
    expert_ids: Sequence[Route] | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    until: Callable[[list[int]], bool] | None = None,
    check_every: int = 8,
    tools: Sequence[DecodingTool | None] | None = None,
    prompt_states: PromptStates | None = None,
    record_lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """Generate up to `max_new_tokens` per row; returns the new tokens (B, N), `pad_token_id` after EOS.

    `until(tokens)`, asked every `check_every` steps about each unfinished row's new tokens, ends that
    row like an EOS when it returns True (e.g. once a scorer's answer can no longer change), so a batch
    stops when every row is done instead of running to `max_new_tokens`.

    `tools` (one per row, None for none) write tokens into their rows (`DecodingTool`); written
    tokens count against `max_new_tokens` like chosen ones.

    `prompt_states` (`ccoe.prompt_states`): rows whose whole prompt has a state there skip the
    prefill's layers below `prompt_states.layer`; with `record_lengths` (one per row) the prefill also
    records each row's first `record_lengths[row]` prompt tokens' state for a later call.
    """
    from transformers import DynamicCache

    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _check_left_padded(attention_mask)
    routes = list(expert_ids) if expert_ids is not None else [expert] * batch
    if len(routes) != batch:
        raise ValueError(f"expert_ids has {len(routes)} entries for a batch of {batch} prompts")
    first_seen = {name: n for n, name in enumerate(dict.fromkeys(routes))}
    order = sorted(range(batch), key=lambda row: first_seen[routes[row]])
    perm = torch.tensor(order, device=input_ids.device)
    ids, mask = input_ids[perm], attention_mask[perm]
    routes = [routes[row] for row in order]
    if tools is not None and len(tools) != batch:
        raise ValueError(f"tools has {len(tools)} entries for a batch of {batch} prompts")
    row_tools = [tools[row] for row in order] if tools is not None else [None] * batch
    written: list[deque[int]] = [deque() for _ in range(batch)]
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []), device=ids.device)

    cache = DynamicCache(config=model.backbone.config)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    new_tokens = []
    step_ids = ids
    for step in range(max_new_tokens):
        if step == 0:
            out = _prefill(model, ids, mask, positions, routes, cache, prompt_states,
                           None if record_lengths is None else [record_lengths[row] for row in order])
        else:
            out = model(step_ids, mask, expert_ids=routes, past_key_values=cache, position_ids=positions, logits_to_keep=1)
        token = select_next_token(
            out.logits[:, -1], do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )
        if any(row_tools):
            token = _apply_tools(token, new_tokens, row_tools, written, finished)
        new_tokens.append(token.masked_fill(finished, pad_token_id))
        if eos.numel():
            finished |= torch.isin(token, eos)
        if until is not None and len(new_tokens) % check_every == 0:
            sofar = torch.stack(new_tokens, dim=1).tolist()
            done = [not f and until(row) for row, f in zip(sofar, finished.tolist())]
            finished |= torch.tensor(done, device=finished.device)
        if bool(finished.all()):
            break
        step_ids = token.unsqueeze(-1)  # finished rows keep decoding their own (discarded) tokens
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        positions = positions[:, -1:] + 1
    generated = torch.stack(new_tokens, dim=1) if new_tokens else ids.new_empty((batch, 0))
    return generated[torch.argsort(perm)]


def _prefill(model: CCoEModel, ids, mask, positions, routes: list[Route], cache, states: PromptStates | None,
             record_lengths: list[int] | None):
    """The first forward of `generate`: equal rows share their lower layers; with `states`, rows with a
    recorded prompt state skip them, and otherwise, with `record_lengths`, every row's state is
    recorded (a batch that reuses records nothing: in planning the recording call is the planner's,
    whose prompts have no states yet)."""
    if states is not None and states.layer <= model.split_layer(routes) and reusable(cache, states.layer, ids.shape[1]):
        found = states.lookup(ids, mask)
        if any(state is not None for state in found):
            return prefill_with_states(model, ids, mask, positions, routes, cache, found, states.layer)
        if record_lengths is not None:
            out = model(ids, mask, expert_ids=routes, past_key_values=cache, position_ids=positions, logits_to_keep=1, capture_at=states.layer)
            states.record(ids, mask, record_lengths, out.captured, cache)
            return out
    return model(ids, mask, expert_ids=routes, past_key_values=cache, position_ids=positions, logits_to_keep=1, share_equal_rows=True)


def _apply_tools(token: torch.Tensor, new_tokens: list[torch.Tensor], tools: Sequence[DecodingTool | None],
                 written: list[deque[int]], finished: torch.Tensor) -> torch.Tensor:
    """`token` (B,) with each row's pending written token in place of the model's, and the tools of
    rows whose newest token is a trigger asked what to write next."""
    chosen, done = token.tolist(), finished.tolist()
    for row, tool in enumerate(tools):
        if tool is None or done[row]:
            continue
        if written[row]:
            chosen[row] = written[row].popleft()
        elif chosen[row] in tool.triggers:
            sofar = [int(step[row]) for step in new_tokens] + [chosen[row]]
            written[row].extend(tool(sofar))
    return torch.tensor(chosen, dtype=token.dtype, device=token.device)


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> left-padded ids (B, T) and attention mask (B, T)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids, mask


@dataclass
class Completion:
    prompt: str
    expert: Route
    text: str


def generate_text(
    model: CCoEModel,
    tokenizer,
    prompts: Sequence[str],
    experts: Sequence[Route],
    *,
    max_new_tokens: int = 64,
    use_chat_template: bool = True,
    until: Callable[[str], bool] | None = None,
    tools: Sequence[DecodingTool | None] | None = None,
    prefix_ids: Sequence[int] = (),
    prompt_states: PromptStates | None = None,
    record: bool = False,
    **sampling,
) -> list[Completion]:
    """Batched text generation; prompts routed to different experts share one batch. `until(text)`
    ends a row early once its text so far satisfies it, and `tools` write into their rows (see
    `generate`). `prefix_ids` start every response: they are prefilled with the prompt (one forward
    instead of a decode step per token) and are not part of the returned text.

    `prompt_states`: prompts recorded there skip their shared layers; `record`: record each prompt's
    state there (the prompt alone, without `prefix_ids`), for a later call on the same prompts."""
    if tokenizer is None:
        raise ValueError("this backbone has no tokenizer; pass token ids to `generate` instead")
    if len(prompts) != len(experts):
        raise ValueError(f"{len(prompts)} prompts but {len(experts)} expert routes")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_prompt(tokenizer, p, use_chat_template) for p in prompts]
    ids, mask = left_pad([e + list(prefix_ids) for e in encoded], pad)
    device = next(model.lm.parameters()).device
    tokens = generate(
        model, ids.to(device), mask.to(device), expert_ids=list(experts), max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
        until=None if until is None else (lambda row: until(tokenizer.decode(row, skip_special_tokens=True))), tools=tools,
        prompt_states=prompt_states, record_lengths=[len(e) for e in encoded] if record else None, **sampling,
    )
    texts = tokenizer.batch_decode(tokens.cpu(), skip_special_tokens=True)
    return [Completion(p, e, t.strip()) for p, e, t in zip(prompts, experts, texts)]
