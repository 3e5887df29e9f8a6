"""Framework-free pieces of expert training: the loss, the prefix cache, the LR schedule, data order.

The Lightning module is a thin shell over these, so the same math runs in a notebook, a test or
another trainer.

- `expert_choice_loss`: for multiple-choice data, a softmax over the options' length-normalised
  log-likelihoods (what the scorer ranks by) plus the right option's LM loss.
- `expert_lm_loss`: layers below the expert's lowest layer run without autograd (no stored
  activations); the LM head (as costly as ~8 SmolLM2 layers per token) runs only at positions whose
  next token is supervised (the response).
- `PrefixCache`: the frozen prefix's hidden states per training example, reused across epochs, up to
  a byte budget. With the cache on, every example's prefix is computed alone at its own length
  (`cached_prefix`), so a cached value is bit-identical to a fresh one whatever batch the example
  lands in, and a resumed run (which starts with an empty cache) trains exactly like an uninterrupted one.
- `StepSeededBatchSampler`: the order of batches is a pure function of (seed, epoch, batch number),
  and a sampler built at global batch `n` continues exactly where a run that did `n` batches was, so a
  resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from ccoe.data import IGNORE_INDEX, MAX_CHOICES
from ccoe.model import CCoEModel


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` at `max_steps`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PrefixCache:
    """Hidden states (T_i, H) entering the split layer, per example index, within `budget_bytes`.

    Only values computed by `cached_prefix` (one example alone, at its own length) may be stored: a
    prefix computed inside a padded batch differs in the last bits (up to ~6e-6) from the same example
    in a batch of another width, because kernels sum in an order that depends on the shape.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self.used_bytes = 0
        self._store: dict[int, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: int) -> torch.Tensor | None:
        """The stored (T_i, H) prefix of example `key`, or None; counts a hit or a miss."""
        hidden = self._store.get(key)
        if hidden is None:
            self.misses += 1
        else:
            self.hits += 1
        return hidden

    def put(self, key: int, hidden: torch.Tensor) -> None:
        """Keep example `key`'s (T_i, H) prefix if the budget allows; negative keys are unnamed examples."""
        size = hidden.numel() * hidden.element_size()
        if key < 0 or key in self._store or self.used_bytes + size > self.budget_bytes:
            return
        self._store[key] = hidden.detach().clone()
        self.used_bytes += size


def cached_prefix(model: CCoEModel, batch: dict[str, torch.Tensor], stop: int, cache: PrefixCache) -> torch.Tensor:
    """Prefix hidden states (B, T, H) entering layer `stop`, each row computed alone at its own length.

    Why one forward per example: it makes an example's prefix a function of the example only (its
    shape never depends on the batch), so a cache hit equals a recomputation bit for bit, examples
    beyond the budget are computed the same way, and a resumed run with an empty cache matches an
    uninterrupted one. Grouping rows of equal length would save forwards but a GEMM's summation order
    may depend on its row count (e.g. on GPUs), so it is not exact by construction. The cost is only on
    misses (the first epoch, or examples beyond the budget); a batch of hits runs no prefix at all, and
    a partly cached batch computes only its missing rows. Padding positions (right side) are zeros:
    with causal attention no real token attends to them and their outputs are never supervised.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    custom, positions = batch.get("choice_mask"), batch.get("position_ids")
    out = None
    for row, (key, length) in enumerate(zip(batch["index"].tolist(), mask.sum(dim=1).tolist())):
        hidden = cache.get(key)
        if hidden is None:
            if custom is None:
                alone, at = mask[row : row + 1, :length], None
            else:
                alone, at = custom[row : row + 1, :, :length, :length], positions[row : row + 1, :length]
            hidden = model.prefix_hidden_states(ids[row : row + 1, :length], alone, stop=stop, position_ids=at)[0]
            cache.put(key, hidden)
        if out is None:
            out = hidden.new_zeros((ids.shape[0], ids.shape[1], hidden.shape[-1]))
        out[row, :length] = hidden
    return out


def _expert_hidden(model: CCoEModel, batch: dict[str, torch.Tensor], expert: str | None, cache: PrefixCache | None) -> torch.Tensor:
    """Final hidden states (B, T, H) under `expert`: the frozen prefix without autograd (from the cache
    when one is given), the expert's layers and everything above with it."""
    ids, positions = batch["input_ids"], batch.get("position_ids")
    mask = batch.get("choice_mask", batch["attention_mask"])
    split = model.split_layer([expert])
    if cache is None:
        hidden = model.prefix_hidden_states(ids, mask, stop=split, position_ids=positions)
    else:
        hidden = cached_prefix(model, batch, split, cache)
    return model.hidden_from(hidden, mask, start=split, expert=expert, position_ids=positions)


def expert_lm_loss(
    model: CCoEModel, batch: dict[str, torch.Tensor], expert: str | None, cache: PrefixCache | None = None
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over response tokens; returns (loss, number of supervised tokens).

    batch: input_ids, attention_mask, labels (B, T) right-padded, `index` (B,) example ids. Without a
    cache the prefix runs once on the padded batch; with one, per example (`cached_prefix`).
    """
    final = _expert_hidden(model, batch, expert, cache)
    targets = batch["labels"][:, 1:]
    supervised = targets != IGNORE_INDEX
    count = int(supervised.sum())
    if count == 0:
        return final.sum() * 0.0, 0
    logits = model.head(final[:, :-1][supervised])
    return F.cross_entropy(logits.float(), targets[supervised]), count


@dataclass(frozen=True)
class ChoiceLoss:
    """`loss` to optimise; `lm` the right options' mean token NLL (the LM objective's loss on the same
    text, so validation losses of both objectives compare); `tokens` its token count; `accuracy` the
    share of examples whose right option scores highest."""

    loss: torch.Tensor
    lm: torch.Tensor
    tokens: int
    accuracy: float


def expert_choice_loss(
    model: CCoEModel, batch: dict[str, torch.Tensor], expert: str | None, cache: PrefixCache | None = None,
    *, scale: float = 2.0, lm_weight: float = 1.0,
) -> ChoiceLoss:
    """The multiple-choice objective on one batch of packed rows (`ccoe.data.collate_choices`).

    Each option's score is its mean token log-likelihood (sum over its tokens / count, EOS included):
    exactly what the multiple-choice scorer (`evaluate_domain`) ranks by, so training moves the
    quantity the metric reads. Loss = cross-entropy of softmax(scale x score) over each example's
    options + lm_weight x the LM loss of the right options' tokens.

    Why both terms: the LM loss alone raises every listed option (the prompt shows them all) and need
    not change their order; the choice term alone can raise the right option by lowering the others
    into text the model would never write. `scale` plays SimPO's beta on length-normalised scores.
    """
    final = _expert_hidden(model, batch, expert, cache)
    flat = final.reshape(-1, final.shape[-1])[batch["predict"]]
    logprobs = -F.cross_entropy(model.head(flat).float(), batch["target"], reduction="none")
    answer, owner = batch["answer"], batch["owner"]
    slots = answer.shape[0] * MAX_CHOICES
    sums = torch.zeros(slots, device=final.device).index_add(0, owner, logprobs)
    counts = torch.bincount(owner, minlength=slots)
    table = torch.where(counts > 0, scale * sums / counts.clamp(min=1), float("-inf")).view(-1, MAX_CHOICES)
    right = torch.arange(answer.shape[0], device=answer.device) * MAX_CHOICES + answer
    tokens = int(counts[right].sum())
    lm = -sums[right].sum() / max(tokens, 1)
    accuracy = float((table.argmax(dim=1) == answer).float().mean())
    return ChoiceLoss(F.cross_entropy(table, answer) + lm_weight * lm, lm, tokens, accuracy)


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
