"""Grouped decoder layers: one layer call for a batch whose rows run different experts at that depth.

Why: in a mixed-expert decode step each expert layer ran once per expert sub-batch (4 experts: 4 calls
of 2 rows x 1 token instead of 1 call of 8 rows). A decoder-layer call is ~40 small ops, and on a CPU
(or a GPU at decode sizes) their dispatch, not their FLOPs, is the cost: the mixed step ran at 0.79x
the plain backbone's. Multi-LoRA servers solve the same problem by stacking adapter weights per layer
(vLLM's `lora_a_stacked`, Punica's SGMV kernels); this is the layer-expert analogue.

How: for decoder layer i, the modules that can run it (the backbone's layer i and every loaded
expert's copy of it, G in all) are stacked once:
- every `nn.Linear` weight (out, in) becomes a (G, out, in) stack and runs as one
  `torch.nn.functional.grouped_mm` over the batch's tokens ordered by group (jagged offsets, so a
  group absent from the batch costs nothing). The stack is passed transposed, (G, in, out) as a
  strided view, which takes the same kernel path per group as `F.linear`: outputs are bit-identical
  (tested), so the mixed-batch contracts hold exactly for bias-free layers;
- every other parameter (RMSNorm weights, Gemma's and OLMo 2's q/k norms) is gathered per row,
  (B, 1, ..., H), and broadcast: the same elementwise products, bit-identical;
- attention, rotary embeddings and the KV cache run once on the whole batch, as for the backbone.

The cost is memory: a stack is a copy of G layers. `CCoEModel` builds it lazily, only for decode steps
(one token a row, no autograd), keeps one per layer, and drops it when an expert at that depth is pushed
or popped or any stacked weight is changed in place (parameter version counters are part of the key).

What it buys (BENCHMARKS.md "Inference", "Engines"): on a 2-core CPU a decode step is bound by reading
weights, so a step with n distinct experts costs about their bytes whichever way it runs; grouping
removes the call overhead on top (continuous batching, SmolLM2-135M, 4 experts: 0.79x vs 0.74x the
backbone's tokens/s at 4 concurrent requests, no measurable change at 16). On GPUs at decode sizes
calls (kernel launches) dominate; that is where it is meant to pay.

Shapes: hidden states (B, T, H); tokens flattened (B*T, H) in row-major order, so row r's tokens are
r*T .. r*T+T-1; offsets (G,) int32, cumulative token counts per group in stack order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GroupLayout:
    """Where each row of the current batch goes in the stack, for one layer call.

    `row_group` (B,) long: the stack index of each row's module. `offsets` (G,) int32: cumulative token
    counts per stack group. `order` (B*T,) long: tokens sorted by group (None when they already are,
    as generation and the serving batch arrange rows); `inverse` undoes it.
    """

    row_group: torch.Tensor
    offsets: torch.Tensor
    order: torch.Tensor | None
    inverse: torch.Tensor | None
    token_group: torch.Tensor  # (B*T,) long, group of each token in sorted order (bias rows)


def layout_for(row_group: torch.Tensor, groups: int, tokens_per_row: int) -> GroupLayout:
    """The layout of a batch whose row r runs stack module `row_group[r]`; T = `tokens_per_row`."""
    counts = torch.bincount(row_group, minlength=groups)
    offsets = (torch.cumsum(counts, 0) * tokens_per_row).to(torch.int32)
    sorted_groups, rows = torch.sort(row_group, stable=True)
    token_group = sorted_groups.repeat_interleave(tokens_per_row)
    if bool((sorted_groups == row_group).all()):
        return GroupLayout(row_group, offsets, None, None, token_group)
    steps = torch.arange(tokens_per_row, device=row_group.device)
    order = (rows.unsqueeze(1) * tokens_per_row + steps).reshape(-1)
    return GroupLayout(row_group, offsets, order, torch.argsort(order), token_group)


class _LayoutSlot:
    """The layout of the call in progress, shared by all grouped submodules of one layer."""

    layout: GroupLayout | None = None


class _GroupedLinear(nn.Module):
    """G linear maps of the same shape, applied to each token with its row's group: (..., in) -> (..., out)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, slot: _LayoutSlot):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)  # (G, out, in)
        self.register_buffer("bias", bias, persistent=False)  # (G, out) or None
        self.slot = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.slot.layout
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        if layout.order is not None:
            tokens = tokens.index_select(0, layout.order)
        out = F.grouped_mm(tokens, self.weight.transpose(1, 2), offs=layout.offsets)
        if self.bias is not None:
            out = out + self.bias.index_select(0, layout.token_group)
        if layout.inverse is not None:
            out = out.index_select(0, layout.inverse)
        return out.view(*shape[:-1], out.shape[-1])


class _PerRowParameters(nn.Module):
    """Wraps a module whose parameters act elementwise on trailing dims (an RMSNorm): each row gets
    its group's parameters, (B, 1, ..., *shape), broadcast against the input (B, ..., *shape)."""

    def __init__(self, module: nn.Module, stacks: dict[str, torch.Tensor], slot: _LayoutSlot):
        super().__init__()
        for name in stacks:
            del module._parameters[name]
        self.inner = module
        self.stacks = stacks  # name -> (G, *shape)
        self.slot = slot

    def forward(self, x: torch.Tensor, *args, **kwargs):
        rows = self.slot.layout.row_group
        for name, stack in self.stacks.items():
            picked = stack.index_select(0, rows)
            broadcast = (picked.shape[0],) + (1,) * (x.ndim - stack.ndim) + tuple(stack.shape[1:])
            object.__setattr__(self.inner, name, picked.view(broadcast))
        return self.inner(x, *args, **kwargs)


def _submodule_parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, leaf = name.rpartition(".")
    return (root.get_submodule(parent) if parent else root), leaf


def groupable(modules: Sequence[nn.Module]) -> bool:
    """True when the modules have one type and structure (same parameter names and shapes) and every
    parameter sits in a submodule (an `nn.Linear`, or a module whose parameters act elementwise)."""
    if any(True for _ in modules[0].parameters(recurse=False)):
        return False
    first = dict(modules[0].named_parameters())
    for module in modules[1:]:
        other = dict(module.named_parameters())
        if other.keys() != first.keys() or any(other[k].shape != first[k].shape for k in first):
            return False
        if type(module) is not type(modules[0]):
            return False
    return bool(first) and all(p.ndim >= 1 for p in first.values())


class GroupedLayer(nn.Module):
    """One decoder layer standing in for G modules of the same structure (stack order = `modules`).

    Call `set_layout(row_group, T)` before the forward; the forward takes what the decoder layer takes.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__()
        if len(modules) < 2 or not groupable(modules):
            raise ValueError("a grouped layer needs at least two modules of one structure")
        template = modules[0]
        shared = {id(p): p for p in template.parameters()} | {id(b): b for b in template.buffers()}
        layer = copy.deepcopy(template, memo=shared)  # the structure, sharing every tensor (replaced below)
        self.slot = _LayoutSlot()
        self.groups = len(modules)
        named = [dict(m.named_modules()) for m in modules]
        with torch.no_grad():
            for name, sub in list(layer.named_modules()):
                own = dict(sub.named_parameters(recurse=False))
                if not own:
                    continue
                stacks = {k: torch.stack([getattr(n[name], k).detach() for n in named]) for k in own}
                parent, leaf = _submodule_parent(layer, name)
                if isinstance(sub, nn.Linear):
                    setattr(parent, leaf, _GroupedLinear(stacks["weight"], stacks.get("bias"), self.slot))
                else:
                    setattr(parent, leaf, _PerRowParameters(sub, stacks, self.slot))
        self.layer = layer

    def set_layout(self, row_group: torch.Tensor, tokens_per_row: int) -> None:
        self.slot.layout = layout_for(row_group, self.groups, tokens_per_row)

    def forward(self, *args, **kwargs):
        return self.layer(*args, **kwargs)

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers()) + sum(
            sum(s.numel() * s.element_size() for s in m.stacks.values())
            for m in self.modules() if isinstance(m, _PerRowParameters))


def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Where `grouped_mm` runs: CPUs (float32, bfloat16), and CUDA GPUs of SM >= 80 in bfloat16 (its documented
    domain); elsewhere the model keeps one call per expert sub-batch."""
    if device.type == "cpu":
        return dtype in (torch.float32, torch.bfloat16)
    if device.type == "cuda":
        return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (8, 0)
    return False


def stack_key(modules: Sequence[nn.Module]) -> tuple:
    """Identity and in-place version of every stacked tensor: a stack is stale when this changes."""
    return tuple((id(m), tuple(p._version for p in m.parameters())) for m in modules)
