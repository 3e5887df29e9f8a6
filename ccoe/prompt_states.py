"""Prompt states: a prompt's pass through the shared layers, kept by one generation and reused by the next.

With `top` experts, every expert leaves the backbone's lower layers untouched, so a prompt's pass
through layers [0, `layer`) is the same whichever expert (or the planner) continues it. Expert
planning runs the same query twice: the planner reads it (`ccoe.planning.plan_queries`), and a
one-step plan then hands the whole query to a domain expert (`execute_plans`). Recording the first
pass's state and reusing it in the second saves the second prefill's lower layers (22 of 30 on
SmolLM2-135M with top-8 experts), which is most of a one-step plan's extra cost over routing.

A `PromptState` is what the layers above need from a prompt of T tokens: the hidden states entering
`layer` (T, H) and the KV cache entries of every layer below it, keys and values (kv_heads, T, D)
each. Positions count from the prompt's first real token, so a state does not depend on the padding
of the batch that computed it and fits any batch that holds the same tokens.

Like vLLM's and SGLang's prefix caches, a lookup is by token ids; unlike them, only a whole prompt
hits (no partial prefixes) and a store lives for one request's calls (`plan_and_run`), capped in
bytes, so it needs no eviction. Reused states are computed in another batch, so logits equal a
fresh prefill's up to float rounding (the same promise as `CCoEModel.forward(share_equal_rows=True)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PromptState:
    """One prompt's pass through layers [0, layer): hidden (T, H) entering `layer`, and per layer below
    it the keys and values (kv_heads, T, D) its KV cache holds."""

    hidden: torch.Tensor
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.hidden, *self.keys, *self.values))


class PromptStates:
    """States of prompts (by token ids) at one layer; records stop once `max_bytes` are held.

    `layer` must not be above the lowest layer of any expert that records or reuses a state, so the
    layers below it are the backbone's for every row (`plan_and_run` takes the lowest first layer of the
    planner and the experts its plans can name, `ccoe.planning.shared_states`).
    """

    def __init__(self, layer: int, max_bytes: int = 256 * 2**20):
        if layer < 1:
            raise ValueError(f"a prompt state needs at least one shared layer below it (layer {layer})")
        self.layer = layer
        self.max_bytes = max_bytes
        self._states: dict[tuple[int, ...], PromptState] = {}
        self._bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._states)

    @property
    def num_bytes(self) -> int:
        return self._bytes

    def get(self, tokens: Sequence[int]) -> PromptState | None:
        return self._states.get(tuple(tokens))

    def put(self, tokens: Sequence[int], state: PromptState) -> bool:
        """Keep `state` for these tokens; False (nothing kept) when it would pass `max_bytes`."""
        key = tuple(tokens)
        if key in self._states:
            return True
        size = state.num_bytes()
        if self._bytes + size > self.max_bytes:
            return False
        self._states[key] = state
        self._bytes += size
        return True

    def record(self, ids: torch.Tensor, mask: torch.Tensor, lengths: Sequence[int], captured: torch.Tensor, cache) -> None:
        """Keep each row's first `lengths[r]` real tokens' state after a left-padded prefill.

        ids, mask (B, W); `captured` (B, W, H) entering `layer` (`CCoEOutput.captured`); `cache` the
        prefill's DynamicCache. Nothing is kept when a layer below `layer` holds fewer than W positions
        (a sliding-window layer past its window): its state would be incomplete.
        """
        width = ids.shape[1]
        layers = cache.layers[: self.layer]
        if len(layers) < self.layer or any(not layer.is_initialized or layer.keys.shape[-2] != width for layer in layers):
            return
        real = mask.sum(dim=1).tolist()
        for row, (count, keep) in enumerate(zip(real, lengths)):
            begin = width - count
            span = slice(begin, begin + min(keep, count))
            tokens = ids[row, span].tolist()
            if not tokens:
                continue
            state = PromptState(captured[row, span].clone(),
                                tuple(layer.keys[row, :, span].clone() for layer in layers),
                                tuple(layer.values[row, :, span].clone() for layer in layers))
            if not self.put(tokens, state):
                return

    def lookup(self, ids: torch.Tensor, mask: torch.Tensor) -> list[PromptState | None]:
        """The state of each row's whole prompt (real tokens of a left-padded (B, W) batch), or None."""
        found = []
        for row, count in enumerate(mask.sum(dim=1).tolist()):
            found.append(self.get(ids[row, ids.shape[1] - count:].tolist()) if count else None)
        self.hits += sum(state is not None for state in found)
        return found


def reusable(cache, layer: int, width: int) -> bool:
    """True when a plain prefill of `width` positions into this (empty) cache keeps every position in
    layers [0, layer): a sliding-window layer keeps only its last `sliding_window - 1` positions. Read
    from the cache's own layers, which transformers built from the config, so the two cannot disagree."""
    layers = cache.layers[:layer]
    return len(layers) == layer and all(not getattr(kept, "is_sliding", False) or width < kept.sliding_window for kept in layers)


def prefill_with_states(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, routes: Sequence,
                        cache, found: Sequence[PromptState | None], layer: int):
    """A prefill of the left-padded batch (B, W) that takes layers [0, layer) from `found` where a row
    has a state and runs them for the other rows; then the layers above for every row. The cache ends
    as a plain prefill leaves it. Returns the model output (last position's logits).

    Padding positions of reused rows get zero hidden states and keys/values: the mask hides them
    from every real token, and zeros keep the attention free of NaN.
    """
    batch, width = ids.shape
    missing = [row for row, state in enumerate(found) if state is None]
    reference = next(state for state in found if state is not None)
    hidden = reference.hidden.new_zeros((batch, width, reference.hidden.shape[-1]))
    keys = [k.new_zeros((batch, k.shape[0], width, k.shape[-1])) for k in reference.keys]
    values = [v.new_zeros((batch, v.shape[0], width, v.shape[-1])) for v in reference.values]
    if missing:
        from transformers import DynamicCache

        rows = torch.tensor(missing, device=ids.device)
        scratch = DynamicCache(config=model.backbone.config)
        hidden[rows] = model.prefix_hidden_states(ids[rows], mask[rows], stop=layer, position_ids=positions[rows], cache=scratch)
        for i in range(layer):
            keys[i][rows] = scratch.layers[i].keys
            values[i][rows] = scratch.layers[i].values
    for row, state in enumerate(found):
        if state is None:
            continue
        span = slice(width - state.hidden.shape[0], width)
        hidden[row, span] = state.hidden
        for i in range(layer):
            keys[i][row, :, span] = state.keys[i]
            values[i][row, :, span] = state.values[i]
    out = model(ids, mask, expert_ids=list(routes), past_key_values=cache, position_ids=positions, logits_to_keep=1,
                hidden_states=hidden, start=layer)
    for i in range(layer):  # after the forward: the masks were built from an empty cache, as in a plain prefill
        cache.update(keys[i], values[i], i)
    return out
