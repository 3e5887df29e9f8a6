"""ExpertModule and DomainDataModule: Lightning shells over `ccoe.training` and `ccoe.data`.

Only the expert's parameters are in the optimizer; the backbone stays frozen and in eval mode.
Checkpoints hold the expert's tensors plus optimizer/scheduler/loop state, never the backbone
(`state_dict` is narrowed to the expert), so a checkpoint is ~3x the expert's bytes with AdamW.
"""

from __future__ import annotations

import time
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ccoe.config import DataSpec, TrainingSpec
from ccoe.data import PreparedData, collate, collate_choices, prepare_data
from ccoe.model import CCoEModel
from ccoe.training import PrefixCache, StepSeededBatchSampler, expert_choice_loss, expert_lm_loss, warmup_cosine

# The data order is derived from the restored global step (StepSeededBatchSampler), so a mid-epoch
# resume is exact even though the DataLoader itself carries no state.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class ExpertModule(pl.LightningModule):
    """Trains one expert of a CCoEModel against the frozen backbone."""

    def __init__(self, model: CCoEModel, expert: str, training: TrainingSpec):
        super().__init__()
        self.model = model
        self.expert_name = expert
        self.training_spec = training
        self.expert = model.experts[expert]
        budget = int(training.prefix_cache_mb * 2**20)
        self.prefix_cache = PrefixCache(budget) if budget > 0 else None
        self._tokens_since = 0
        self._clock = time.perf_counter()

    def state_dict(self, *args, **kwargs):
        """Only the expert's tensors: checkpoints never carry the backbone."""
        return self.expert.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.expert.load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.lm.eval()
        return self

    def configure_optimizers(self):
        spec = self.training_spec
        optimizer = torch.optim.AdamW(self.expert.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, warmup_steps=spec.warmup_steps, max_steps=spec.max_steps, min_ratio=spec.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _choice(self, batch, cache=None):
        spec = self.training_spec
        return expert_choice_loss(self.model, batch, self.expert_name, cache, scale=spec.choice_scale, lm_weight=spec.choice_lm_weight)

    def training_step(self, batch, batch_idx):
        examples = batch["input_ids"].shape[0]
        if self.training_spec.objective == "choice":
            result = self._choice(batch, self.prefix_cache)
            loss, tokens, examples = result.loss, result.tokens, batch["answer"].shape[0]
            self.log("train/choice_accuracy", result.accuracy, batch_size=examples)
        else:
            loss, tokens = expert_lm_loss(self.model, batch, self.expert_name, self.prefix_cache)
        self._tokens_since += int(batch["attention_mask"].sum())
        self.log("train/loss", loss, prog_bar=True, batch_size=examples)
        self.log("train/supervised_tokens", float(tokens), reduce_fx="sum", batch_size=1)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if (self.global_step % self.trainer.log_every_n_steps) == 0:
            elapsed = time.perf_counter() - self._clock
            self.log("train/tokens_per_s", self._tokens_since / max(elapsed, 1e-9))
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
            if self.prefix_cache is not None:
                self.log("train/prefix_cache_mb", self.prefix_cache.used_bytes / 2**20)
            self._tokens_since, self._clock = 0, time.perf_counter()

    def validation_step(self, batch, batch_idx):
        """val/loss is the gold responses' NLL under either objective (comparable across trials);
        the choice objective adds val/choice_accuracy, the scorer's metric on the validation split."""
        if self.training_spec.objective == "choice":
            result = self._choice(batch)
            loss, tokens = result.lm, result.tokens
            self.log("val/choice_accuracy", result.accuracy, batch_size=batch["answer"].shape[0], sync_dist=True)
        else:
            loss, tokens = expert_lm_loss(self.model, batch, self.expert_name)
        self.log("val/loss", loss, prog_bar=True, batch_size=max(tokens, 1), sync_dist=True)
        return loss


class DomainDataModule(pl.LightningDataModule):
    """Tokenized train/validation splits of one domain; data order resumable from the global step."""

    def __init__(self, data: DataSpec, training: TrainingSpec, tokenizer):
        super().__init__()
        self.data_spec, self.training_spec, self.tokenizer = data, training, tokenizer
        self.prepared: PreparedData | None = None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = 0 if pad is None else pad

    def setup(self, stage: str | None = None) -> None:
        if self.prepared is None:
            self.prepared = prepare_data(self.data_spec, self.tokenizer)

    def _items(self, rows):
        return [{**row, "index": i} for i, row in enumerate(rows)]

    def train_dataloader(self):
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        consumed = trainer.global_step * trainer.accumulate_grad_batches if trainer is not None else 0
        sampler = StepSeededBatchSampler(
            len(self.prepared.train), self.training_spec.batch_size, self.training_spec.seed,
            rank=rank, world_size=world, start_batch=consumed,
        )
        return DataLoader(self._items(self.prepared.train), batch_sampler=sampler, collate_fn=self._collate)

    def val_dataloader(self):
        if not self.prepared.val:
            return []
        return DataLoader(self._items(self.prepared.val), batch_size=self.training_spec.batch_size, collate_fn=self._collate)

    def _collate(self, items):
        if self.training_spec.objective == "choice":
            return collate_choices(items, self.pad_token_id)
        return collate(items, self.pad_token_id)
