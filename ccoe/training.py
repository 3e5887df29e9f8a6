"""Framework-free pieces of expert training: the loss, the prefix cache, the LR schedule, data order.

The Lightning module is a thin shell over these, so the same math runs in a notebook, a test or
another trainer.

- `expert_lm_loss`: layers below the expert's lowest layer run without autograd (no stored
  activations); the LM head (as costly as ~8 SmolLM2 layers per token) runs only at positions whose
  next token is supervised (the response).
- `PrefixCache`: the frozen prefix's hidden states per training example, reused across epochs, up to
  a byte budget. Exact because the backbone is frozen and padding is on the right (causal attention
  never lets a real token see padding).
- `StepSeededBatchSampler`: the order of batches is a pure function of (seed, epoch, batch number),
  and a sampler built at global batch `n` continues exactly where a run that did `n` batches was, so a
  resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from ccoe.data import IGNORE_INDEX
from ccoe.model import CCoEModel


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` at `max_steps`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PrefixCache:
    """Hidden states (T_i, H) entering the split layer, per example index, within `budget_bytes`."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self.used_bytes = 0
        self._store: dict[int, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def lookup(self, index: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """A right-padded (B, T, H) batch if every example is cached, else None."""
        keys = index.tolist()
        if not all(k in self._store for k in keys):
            self.misses += 1
            return None
        self.hits += 1
        first = self._store[keys[0]]
        out = first.new_zeros((len(keys), attention_mask.shape[1], first.shape[-1]))
        for row, k in enumerate(keys):
            cached = self._store[k]
            out[row, : cached.shape[0]] = cached
        return out.to(attention_mask.device)

    def store(self, index: torch.Tensor, hidden: torch.Tensor, attention_mask: torch.Tensor) -> None:
        lengths = attention_mask.sum(dim=1).tolist()
        for k, row, n in zip(index.tolist(), hidden, lengths):
            if k in self._store or k < 0:
                continue
            size = n * row.shape[-1] * row.element_size()
            if self.used_bytes + size > self.budget_bytes:
                return
            self._store[k] = row[:n].detach().clone()
            self.used_bytes += size


def expert_lm_loss(
    model: CCoEModel, batch: dict[str, torch.Tensor], expert: str | None, cache: PrefixCache | None = None
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over response tokens; returns (loss, number of supervised tokens).

    batch: input_ids, attention_mask, labels (B, T) right-padded, `index` (B,) example ids.
    """
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    split = model.split_layer([expert])
    hidden = cache.lookup(batch["index"], mask) if cache is not None else None
    if hidden is None:
        hidden = model.prefix_hidden_states(ids, mask, stop=split)
        if cache is not None:
            cache.store(batch["index"], hidden, mask)
    final = model.hidden_from(hidden, mask, start=split, expert=expert)
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    count = int(supervised.sum())
    if count == 0:
        return final.sum() * 0.0, 0
    logits = model.head(final[:, :-1][supervised])
    return F.cross_entropy(logits.float(), targets[supervised]), count


class StepSeededBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose order depends only on (seed, epoch); resumable at any global batch.

    With `world_size` > 1 each rank takes every `world_size`-th batch of the epoch's list, all ranks
    the same number. `start_batch` is the number of batches this rank has already consumed.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, *, rank: int = 0, world_size: int = 1, start_batch: int = 0):
        if num_examples < batch_size * world_size:
            raise ValueError(
                f"{num_examples} training examples cannot fill one batch of {batch_size} on each of {world_size} "
                "processes; lower batch_size or add data"
            )
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.next_batch = start_batch

    def __len__(self) -> int:
        return (self.num_examples // self.batch_size) // self.world_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_examples, generator=generator).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]
        return batches[self.rank :: self.world_size][: len(self)]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.next_batch, len(self))
        for batch in self.epoch_batches(epoch)[offset:]:
            self.next_batch += 1
            yield batch
