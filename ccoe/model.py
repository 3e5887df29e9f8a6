"""CCoEModel: one frozen backbone plus experts, with per-row expert routing in one forward pass.

The decoder loop is written out (embed -> masks -> rotary -> layers -> norm -> head) instead of
calling the backbone's `forward`, because a layer here may run different modules for different rows:

- a batch row is routed to one expert or to none (the plain backbone);
- at layer `i`, rows whose expert owns `i` run that expert's copy, the other rows the backbone's;
- a layer that no expert in the batch owns runs once on the whole batch (the common case: with the
  `top` strategy every layer below the split is shared);
- with a KV cache, each expert sub-batch reads its own rows of the cache and the new keys/values of
  all sub-batches are written back in one update (`_RowGroupCache`).

Shapes: input_ids (B, T); hidden states (B, T, H); logits (B, T', V) with T' = T or `logits_to_keep`.
Pushing or popping an expert is a dict update (no weight copies); popping drops the last reference,
so the expert's tensors are freed.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ccoe.backbone import Backbone, layer_types
from ccoe.config import check_name
from ccoe.expert import Expert
from ccoe.grouped import GroupedLayer, groupable, grouped_mm_supported, stack_key

Route = str | None


@dataclass
class CCoEOutput:
    logits: torch.Tensor
    past_key_values: object | None = None
    captured: torch.Tensor | None = None  # (B, T, H) entering layer `capture_at`, when asked for


@dataclass
class _Context:
    """Per-forward inputs shared by every layer."""

    masks: dict[str, torch.Tensor | None]
    position_embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]]  # per layer type: (cos, sin), each (B, T, D)
    position_ids: torch.Tensor
    cache: object | None
    batch_size: int


class _RowGroupCache:
    """A view of a DynamicCache for the rows of one expert sub-batch at one layer.

    `update` returns past keys/values of those rows concatenated with the new ones (what the layer
    attends to) and records the new ones; `flush` writes all sub-batches' new keys/values back into
    the real cache with a single full-batch update, so cache layouts stay what transformers expects.
    """

    def __init__(self, cache, batch_size: int):
        self.cache = cache
        self.batch_size = batch_size
        self.rows: slice | torch.Tensor = slice(None)
        self.pending: list[tuple[slice | torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.pending.append((self.rows, key_states, value_states))
        layers = self.cache.layers
        if layer_idx < len(layers) and layers[layer_idx].is_initialized and layers[layer_idx].keys.numel():
            past_k, past_v = layers[layer_idx].keys[self.rows], layers[layer_idx].values[self.rows]
            return torch.cat([past_k, key_states], dim=-2), torch.cat([past_v, value_states], dim=-2)
        return key_states, value_states

    def flush(self, layer_idx: int) -> None:
        _, k0, v0 = self.pending[0]
        keys = k0.new_empty((self.batch_size, *k0.shape[1:]))
        values = v0.new_empty((self.batch_size, *v0.shape[1:]))
        for rows, k, v in self.pending:
            keys[rows] = k
            values[rows] = v
        self.pending.clear()
        self.cache.update(keys, values, layer_idx)

    def __getattr__(self, name):
        return getattr(self.cache, name)


def _row_index(rows: Sequence[int], device) -> slice | torch.Tensor:
    """A slice when the rows are contiguous (views, no copies), else an index tensor."""
    if list(rows) == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(list(rows), device=device, dtype=torch.long)


def _take(value, rows, batch_size: int):
    """Rows of a batch-leading tensor; tensors broadcast over the batch (leading dim 1) pass through."""
    if value is None or batch_size == 1 or value.shape[0] == 1:
        return value
    return value[rows]


class CCoEModel(nn.Module):
    """A frozen backbone and a set of named experts.

    `forward(input_ids, expert=...)` routes the whole batch; `forward(input_ids, expert_ids=[...])`
    routes each row. `None` means the plain backbone.
    """

    def __init__(self, backbone: Backbone, *, grouped_layers: bool = False):
        super().__init__()
        self.backbone = backbone
        # Decode steps without autograd: a layer that several experts run in one batch is one grouped call over
        # stacked weights (`ccoe.grouped`), at the memory of one stack per such layer. Prefill (many tokens a row)
        # amortizes the calls and keeps one per expert sub-batch: grouping it gained nothing measurable.
        # {layer: (key, module weakrefs, GroupedLayer)}
        self.grouped_layers = grouped_layers
        self._stacks: dict[int, tuple[tuple, list, GroupedLayer]] = {}
        self.lm = backbone.model
        self.experts = nn.ModuleDict()
        self._layer_types: list[str] = layer_types(backbone.config, backbone.num_layers)
        # Gemma 3 has one rotary embedding per layer type (local and global rope_theta); the others one for all.
        self._rotary_per_type = "layer_type" in inspect.signature(self.lm.model.rotary_emb.forward).parameters
        self._softcap: float | None = getattr(backbone.config, "final_logit_softcapping", None)

    @property
    def fingerprint(self) -> str:
        return self.backbone.fingerprint

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    def train(self, mode: bool = True) -> "CCoEModel":
        """Only experts change mode; the backbone stays in eval mode (frozen, no dropout)."""
        self.training = mode
        self.experts.train(mode)
        self.lm.eval()
        return self

    # -- pop and push ---------------------------------------------------------------------------

    def push_expert(self, expert: Expert) -> None:
        """Add an expert, or replace the one with the same name. Refuses foreign backbones."""
        check_name(expert.name)
        if expert.backbone_fingerprint != self.fingerprint:
            raise ValueError(
                f"expert {expert.name!r} was made for backbone {expert.backbone_fingerprint[:12]}…, "
                f"not this one ({self.fingerprint[:12]}…); retrain it on this backbone"
            )
        bad = [i for i in expert.layer_indices if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"expert {expert.name!r} owns layers {bad}, outside this {self.num_layers}-layer backbone")
        param = next(self.lm.parameters())
        if expert.name in self.experts:
            self._drop_stacks(self.experts[expert.name])
        self.experts[expert.name] = expert.to(device=param.device, dtype=param.dtype)
        self._drop_stacks(expert)

    def pop_expert(self, name: str) -> None:
        """Remove an expert; with no other reference left its tensors are freed."""
        if name not in self.experts:
            raise KeyError(f"no expert named {name!r}; loaded experts: {sorted(self.experts)}")
        self._drop_stacks(self.experts[name])
        del self.experts[name]

    def _drop_stacks(self, expert: Expert) -> None:
        """Forget the grouped layers at the expert's depths: they hold its weights (or lack them)."""
        for i in expert.layer_indices:
            self._stacks.pop(i, None)

    def expert_names(self) -> list[str]:
        return list(self.experts)

    def _expert(self, name: Route) -> Expert | None:
        if name is None:
            return None
        if name not in self.experts:
            raise KeyError(f"no expert named {name!r}; loaded experts: {sorted(self.experts)} (None = backbone)")
        return self.experts[name]

    # -- the decoder loop -------------------------------------------------------------------------

    def _context(self, embeds, attention_mask, position_ids, cache) -> _Context:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        batch, length = embeds.shape[:2]
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(past, past + length, device=embeds.device).unsqueeze(0)
        if attention_mask is not None and attention_mask.ndim == 4:
            masks = {kind: self._custom_mask(attention_mask, position_ids, kind) for kind in set(self._layer_types)}
            return _Context(masks, self._rotary(embeds, position_ids), position_ids, cache, batch)
        kwargs = dict(
            config=self.backbone.config,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
        )
        masks = {}
        for kind in set(self._layer_types):
            build = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
            masks[kind] = build(**kwargs)
        return _Context(masks, self._rotary(embeds, position_ids), position_ids, cache, batch)

    def _rotary(self, embeds, position_ids) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(cos, sin) per layer type: Gemma 3's rotary takes the layer type, the others' serve every layer."""
        rotary = self.lm.model.rotary_emb
        if self._rotary_per_type:
            return {kind: rotary(embeds, position_ids, kind) for kind in set(self._layer_types)}
        shared = rotary(embeds, position_ids=position_ids)
        return {kind: shared for kind in set(self._layer_types)}

    def _custom_mask(self, allowed: torch.Tensor, position_ids: torch.Tensor, kind: str) -> torch.Tensor:
        """A (B, 1, T, T) boolean mask (True = may attend) in the form the attention kernels take.

        Sliding-window layers also drop keys `sliding_window` or more positions behind the query (by
        position id, as the built-in masks do); eager attention adds the mask, so it gets 0 / -inf.
        """
        if kind == "sliding_attention":
            distance = position_ids.unsqueeze(-1) - position_ids.unsqueeze(-2)
            allowed = allowed & (distance < self.backbone.config.sliding_window).unsqueeze(1)
        if getattr(self.backbone.config, "_attn_implementation", "sdpa") == "eager":
            dtype = self.lm.model.embed_tokens.weight.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        return allowed

    def _run_layer(self, module: nn.Module, hidden, ctx: _Context, index: int, rows, cache):
        n = ctx.batch_size
        return module(
            hidden,
            attention_mask=_take(ctx.masks[self._layer_types[index]], rows, n),
            position_ids=_take(ctx.position_ids, rows, n),
            past_key_values=cache,
            use_cache=cache is not None,
            position_embeddings=tuple(_take(t, rows, n) for t in ctx.position_embeddings[self._layer_types[index]]),
        )

    def _layers(self, hidden, ctx: _Context, groups, start: int, stop: int):
        """Run decoder layers [start, stop). `groups`: list of (row index, Expert | None), covering all rows."""
        backbone_layers = self.lm.model.layers
        grouped = self.grouped_layers and not torch.is_grad_enabled() and hidden.shape[1] == 1
        for i in range(start, stop):
            modules = [e.layer(i) if e is not None and i in e.layer_indices else backbone_layers[i] for _, e in groups]
            if all(m is modules[0] for m in modules):
                hidden = self._run_layer(modules[0], hidden, ctx, i, slice(None), ctx.cache)
                continue
            stack = self._grouped_layer(i, groups, modules, hidden) if grouped else None
            if stack is not None:
                hidden = self._run_layer(stack, hidden, ctx, i, slice(None), ctx.cache)
                continue
            view = _RowGroupCache(ctx.cache, ctx.batch_size) if ctx.cache is not None else None
            out = torch.empty_like(hidden)
            for (rows, _), module in zip(groups, modules):
                if view is not None:
                    view.rows = rows
                out[rows] = self._run_layer(module, hidden[rows], ctx, i, rows, view)
            if view is not None:
                view.flush(i)
            hidden = out
        return hidden

    def _grouped_layer(self, index: int, groups, modules: list[nn.Module], hidden) -> GroupedLayer | None:
        """Layer `index` as one grouped module over every module that can run it (backbone first, then
        each loaded expert owning it), laid out for this batch; None when their structures differ.
        A cached stack is reused while the same live modules, unchanged in place, can run the layer."""
        candidates = [self.lm.model.layers[index]] + [e.layer(index) for e in self.experts.values() if index in e.layer_indices]
        param = next(candidates[0].parameters())
        if not grouped_mm_supported(param.device, param.dtype):
            return None
        key = (stack_key(candidates), param.device, param.dtype)
        cached = self._stacks.get(index)
        if cached is None or cached[0] != key or any(ref() is not m for ref, m in zip(cached[1], candidates)):
            self._stacks.pop(index, None)
            if not groupable(candidates):
                return None
            cached = (key, [weakref.ref(m) for m in candidates], GroupedLayer(candidates))
            self._stacks[index] = cached
        position = {id(m): g for g, m in enumerate(candidates)}
        row_group = torch.empty(hidden.shape[0], dtype=torch.long, device=hidden.device)
        for (rows, _), module in zip(groups, modules):
            row_group[rows] = position[id(module)]
        layer = cached[2]
        layer.set_layout(row_group, hidden.shape[1])
        return layer

    def stack_bytes(self) -> int:
        """Bytes held by the grouped layers' weight stacks (0 unless `grouped_layers` ran a mixed batch)."""
        return sum(layer.num_bytes() for _, _, layer in list(self._stacks.values()))  # a copy: /metrics reads it from another thread

    def _groups(self, batch: int, expert, expert_ids, device) -> list[tuple[slice | torch.Tensor, Expert | None]]:
        if expert_ids is None:
            return [(slice(None), self._expert(expert))]
        if expert is not None:
            raise ValueError("pass either `expert` (whole batch) or `expert_ids` (one per row), not both")
        if len(expert_ids) != batch:
            raise ValueError(f"expert_ids has {len(expert_ids)} entries for a batch of {batch} rows")
        order: dict[Route, list[int]] = {}
        for row, name in enumerate(expert_ids):
            order.setdefault(name, []).append(row)
        if len(order) == 1:
            return [(slice(None), self._expert(next(iter(order))))]
        return [(_row_index(rows, device), self._expert(name)) for name, rows in order.items()]

    def _head(self, hidden, logits_to_keep: int | None):
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return self.head(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        expert: Route = None,
        expert_ids: Sequence[Route] | None = None,
        past_key_values=None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
        share_equal_rows: bool = False,
        hidden_states: torch.Tensor | None = None,
        start: int = 0,
        capture_at: int | None = None,
    ) -> CCoEOutput:
        """Logits (B, T', V) with each row run through its expert's layers (None = backbone).

        `share_equal_rows`: rows with equal input ids, mask and positions (one prompt under several
        experts, as evaluation scores it) run the layers below the lowest expert layer once, and the
        result and those layers' KV cache are copied to each of them. Same logits and cache as
        without (up to float rounding); what generation's prefill uses.

        `hidden_states` (B, T, H) entering layer `start`: the layers below are not run (their KV cache
        entries, if any, are the caller's to write: `ccoe.prompt_states`); `start` must not be above
        any routed expert's lowest layer. `capture_at`: also return the hidden states entering that
        layer (`CCoEOutput.captured`), e.g. to reuse a prompt's shared layers in a later call."""
        groups = self._groups(input_ids.shape[0], expert, expert_ids, input_ids.device)
        if hidden_states is None:
            embeds, start = self.lm.model.embed_tokens(input_ids), 0
        else:
            lowest = min((min(e.layer_indices) for _, e in groups if e is not None), default=self.num_layers)
            if start > lowest:
                raise ValueError(f"start layer {start} is above the lowest expert layer of this batch ({lowest})")
            embeds = hidden_states
        ctx = self._context(embeds, attention_mask, position_ids, past_key_values)
        if capture_at is not None:
            if not start <= capture_at <= self.num_layers:
                raise ValueError(f"capture_at={capture_at} is outside layers [{start}, {self.num_layers}]")
            captured = self._layers(embeds, ctx, groups, start, capture_at)
            hidden = self._layers(captured, ctx, groups, capture_at, self.num_layers)
            return CCoEOutput(self._head(hidden, logits_to_keep), past_key_values, captured)
        if share_equal_rows and hidden_states is None:
            embeds, start = self._shared_rows_prefix(input_ids, attention_mask, embeds, ctx, groups)
        hidden = self._layers(embeds, ctx, groups, start, self.num_layers)
        return CCoEOutput(self._head(hidden, logits_to_keep), past_key_values)

    def _shared_rows_prefix(self, input_ids, attention_mask, embeds, ctx: _Context, groups) -> tuple[torch.Tensor, int]:
        """Hidden states (B, T, H) entering the lowest expert layer of `groups`, and that layer, with
        the layers below run once per distinct row (ids, padding mask and positions equal) and their KV
        cache entries copied to the duplicates. (embeds, 0) when no two rows are equal, no layer is
        shared, or the mask is a custom (B, 1, T, T) one.

        Why: the prefill is compute-bound (~1 ms a token for SmolLM2-135M on 2 cores) and evaluation
        prefills every prompt once per route; with `top` experts 22 of 30 layers are shared."""
        split = min((min(e.layer_indices) for _, e in groups if e is not None), default=self.num_layers)
        batch = input_ids.shape[0]
        if split == 0 or batch == 1 or (attention_mask is not None and attention_mask.ndim != 2):
            return embeds, 0
        parts = [input_ids, ctx.position_ids.expand(batch, -1)] + ([attention_mask] if attention_mask is not None else [])
        key = torch.cat([p.to(torch.long) for p in parts], dim=1)
        distinct, source = torch.unique(key, dim=0, return_inverse=True)
        if len(distinct) == batch:
            return embeds, 0
        first = torch.full((len(distinct),), batch, device=source.device).scatter_reduce_(
            0, source, torch.arange(batch, device=source.device), "amin")
        masks = {kind: _take(m, first, batch) for kind, m in ctx.masks.items()}
        rotary = {kind: tuple(_take(t, first, batch) for t in pair) for kind, pair in ctx.position_embeddings.items()}
        shared = _Context(masks, rotary,
                          _take(ctx.position_ids, first, batch), ctx.cache, len(distinct))
        hidden = self._layers(embeds[first], shared, [(slice(None), None)], 0, split)
        if ctx.cache is not None:
            for layer in ctx.cache.layers[:split]:
                layer.reorder_cache(source)
        return hidden[source], split

    # -- shared prefix ----------------------------------------------------------------------------

    def split_layer(self, experts: Sequence[Route]) -> int:
        """Lowest layer any of these experts owns (L when none): layers below it are shared."""
        owned = [min(self._expert(n).layer_indices) for n in experts if n is not None]
        return min(owned, default=self.num_layers)

    def prefix_hidden_states(self, input_ids, attention_mask=None, stop: int | None = None, position_ids=None, cache=None) -> torch.Tensor:
        """Backbone hidden states (B, T, H) entering layer `stop`, computed without autograd.

        `attention_mask` is (B, T) padding, or a custom (B, 1, T, T) boolean mask (True = may attend)
        with its `position_ids` (B, T): e.g. packed multiple-choice rows (`ccoe.data.collate_choices`).
        `cache` (an empty DynamicCache), if given, receives the KV entries of layers [0, stop).
        """
        stop = self.num_layers if stop is None else stop
        with torch.no_grad():
            embeds = self.lm.model.embed_tokens(input_ids)
            ctx = self._context(embeds, attention_mask, position_ids, cache)
            return self._layers(embeds, ctx, [(slice(None), None)], 0, stop)

    def hidden_from(
        self, hidden: torch.Tensor, attention_mask=None, *, start: int, expert: Route = None, position_ids=None
    ) -> torch.Tensor:
        """Last-layer hidden states (B, T, H), before the final norm, from hidden states entering `start`
        (masks and positions as in `prefix_hidden_states`).

        `start` must not be above the expert's lowest layer, or the expert would be skipped there.
        """
        module = self._expert(expert)
        if module is not None and start > min(module.layer_indices):
            raise ValueError(f"start layer {start} is above expert {expert!r}'s lowest layer {min(module.layer_indices)}")
        ctx = self._context(hidden, attention_mask, position_ids, None)
        return self._layers(hidden, ctx, [(slice(None), module)], start, self.num_layers)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head: (..., H) -> (..., V), soft-capped where the backbone caps its logits (Gemma)."""
        logits = self.lm.lm_head(self.lm.model.norm(hidden))
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def forward_from_hidden(
        self, hidden: torch.Tensor, attention_mask=None, *, start: int, expert: Route = None, logits_to_keep: int | None = None
    ) -> torch.Tensor:
        """Logits (B, T', V) from hidden states (B, T, H) entering layer `start`, e.g. a cached shared prefix."""
        return self._head(self.hidden_from(hidden, attention_mask, start=start, expert=expert), logits_to_keep)

    def forward_many(
        self, input_ids, attention_mask=None, *, experts: Sequence[Route], logits_to_keep: int | None = None
    ) -> dict[Route, torch.Tensor]:
        """The same batch under several experts: layers below the lowest expert layer run once.

        Returns {expert: logits (B, T', V)}. Used by evaluation, routing and planning.
        """
        split = self.split_layer(experts)
        embeds = self.lm.model.embed_tokens(input_ids)
        ctx = self._context(embeds, attention_mask, None, None)
        shared = self._layers(embeds, ctx, [(slice(None), None)], 0, split)
        results = {}
        for name in dict.fromkeys(experts):
            hidden = self._layers(shared, ctx, [(slice(None), self._expert(name))], split, self.num_layers)
            results[name] = self._head(hidden, logits_to_keep)
        return results

    # -- accounting -------------------------------------------------------------------------------

    def parameter_bytes(self) -> dict[str, int]:
        """Bytes held by the backbone and by each expert (tied backbone tensors counted once)."""
        seen, backbone = set(), 0
        for p in self.lm.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                backbone += p.numel() * p.element_size()
        sizes = {"backbone": backbone}
        sizes.update({name: e.num_bytes() for name, e in self.experts.items()})
        return sizes
