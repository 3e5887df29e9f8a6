"""A small hyper-parameter sweep for one expert, chosen on its validation split, never on test items.

`SweepSpec` is a grid (learning rates x layer selections x step counts). `sweep_trials` turns it into
one training job per point: the pipeline's job for the expert with that point's overrides, under the
name `<expert>-t<i>` (each trial is its own MLflow run and blob). `choose_trial` scores every trained
trial on the validation split that the trainer held out of the same data (so nothing the gate or the
domain report tests on is ever used for the choice) in one shared-prefix pass, and returns the trials
ranked by validation NLL with each one's paired interval against the best.

Why validation NLL and not the task metric: the validation split is drawn from the training data,
which has gold responses but no scorer-ready fields (choices, tests); NLL of the gold response is the
quantity training optimises and is measured with an interval from a few dozen items.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from pydantic import Field

from ccoe.artifact import fetch_blob
from ccoe.backbone import load_backbone
from ccoe.config import DataSpec, ExpertJobSpec, ExpertPlan, LayerSelection, PipelineSpec, Spec, TrainingOverrides, apply_overrides
from ccoe.data import validation_items
from ccoe.evaluate import sequence_logprobs
from ccoe.evidence import PairedDifference, paired_difference
from ccoe.expert import expert_from_bytes
from ccoe.manifest import TrainedExpert
from ccoe.model import CCoEModel
from ccoe.storage import BlobStore


class SweepSpec(Spec):
    """The grid of one expert's sweep. Every combination is one trial (keep it small: each trains)."""

    learning_rates: list[float] = Field(min_length=1, description="AdamW peak learning rates")
    layers: list[LayerSelection] = Field(min_length=1, description="layer strategies and k")
    max_steps: list[int] = Field(default_factory=list, description="step counts (default: the expert's own)")
    max_val_items: int = Field(200, ge=4, description="validation items scored per trial")

    def points(self) -> list[tuple[float, LayerSelection, int | None]]:
        return list(itertools.product(self.learning_rates, self.layers, self.max_steps or [None]))


@dataclass(frozen=True)
class Trial:
    """One point of the grid and the training job that realises it."""

    name: str
    learning_rate: float
    layers: LayerSelection
    max_steps: int
    job: ExpertJobSpec

    def describe(self) -> str:
        return f"lr {self.learning_rate:g}, {self.layers.strategy} k={self.layers.k}, {self.max_steps} steps"


@dataclass(frozen=True)
class TrialScore:
    """A trial's validation NLL (nats/token) and its paired difference to the best trial (>= 0: worse)."""

    trial: Trial
    val_loss: float
    versus_best: PairedDifference


@dataclass(frozen=True)
class SweepResult:
    """Trials ranked by validation NLL, best first; `n` validation items; failed trials by name."""

    ranked: tuple[TrialScore, ...]
    n: int
    failures: dict[str, str]

    @property
    def best(self) -> Trial:
        return self.ranked[0].trial

    def overrides(self) -> TrainingOverrides:
        """What to put under the expert's `training:` in the pipeline config to use the best trial."""
        best = self.best
        return TrainingOverrides(learning_rate=best.learning_rate, max_steps=best.max_steps)

    def table(self) -> list[dict]:
        return [{"trial": s.trial.name, "learning_rate": s.trial.learning_rate, "layers": f"{s.trial.layers.strategy} k={s.trial.layers.k}",
                 "max_steps": s.trial.max_steps, "val_loss": round(s.val_loss, 4), "vs_best": round(s.versus_best.estimate, 4),
                 "vs_best_low": round(s.versus_best.low, 4), "vs_best_high": round(s.versus_best.high, 4), "n": self.n}
                for s in self.ranked]

    def markdown(self) -> str:
        lines = [f"## Sweep: best {self.best.name} ({self.best.describe()}), validation NLL on {self.n} held-out training items", "",
                 "| trial | settings | val NLL | vs best [95% CI] |", "|---|---|---|---|"]
        for s in self.ranked:
            lines.append(f"| {s.trial.name} | {s.trial.describe()} | {s.val_loss:.4f} | {s.versus_best.text(4)} |")
        if self.failures:
            lines += ["", *[f"- {name} failed: {error[-300:]}" for name, error in sorted(self.failures.items())]]
        return "\n".join(lines)


def sweep_trials(spec: PipelineSpec, plan: ExpertPlan, data: DataSpec, sweep: SweepSpec) -> list[Trial]:
    """One job per grid point: the pipeline's job for `plan` with the point's learning rate, layers
    and steps. Refuses data without a validation split (nothing to choose on)."""
    if data.val_fraction <= 0:
        raise ValueError(f"expert {plan.expert.name!r}: a sweep chooses on the validation split; give its data a val_fraction > 0")
    base = apply_overrides(spec.training, plan.training)
    trials = []
    for i, (lr, layers, steps) in enumerate(sweep.points()):
        name = f"{plan.expert.name}-t{i}"
        training = base.model_copy(update={"learning_rate": lr, "max_steps": steps or base.max_steps})
        expert = plan.expert.model_copy(update={"name": name, "layers": layers})
        job = spec.job(plan.model_copy(update={"expert": expert, "training": TrainingOverrides()}), data)
        trials.append(Trial(name, lr, layers, training.max_steps, job.model_copy(update={"training": training})))
    return trials


def rank_trials(trials: list[Trial], item_nll: dict[str, tuple[list[float], list[float]]], failures: dict[str, str],
                confidence: float = 0.95, seed: int = 0) -> SweepResult:
    """Rank the trained trials by validation NLL. item_nll: trial name -> (per-item summed NLL, token counts),
    each (n,) on the same items."""
    failures = dict(failures)
    for name, (sums, _) in list(item_nll.items()):
        if not all(math.isfinite(x) for x in sums):
            failures[name] = "diverged: non-finite validation NLL"
            item_nll = {k: v for k, v in item_nll.items() if k != name}
    scored = [t for t in trials if t.name in item_nll]
    if not scored:
        raise RuntimeError(f"every trial failed: {failures}")
    per_token = {name: [s / max(c, 1.0) for s, c in zip(sums, counts)] for name, (sums, counts) in item_nll.items()}
    tokens = [max(c, 1.0) for c in next(iter(item_nll.values()))[1]]
    losses = {name: sum(sums) / sum(counts) for name, (sums, counts) in item_nll.items()}
    best = min(scored, key=lambda t: (losses[t.name], t.name))
    ranked = sorted(
        (TrialScore(t, losses[t.name], paired_difference(per_token[t.name], per_token[best.name], tokens, confidence=confidence, seed=seed))
         for t in scored),
        key=lambda s: (s.val_loss, s.trial.name),
    )
    return SweepResult(tuple(ranked), len(tokens), failures)


def choose_trial(spec: PipelineSpec, data: DataSpec, sweep: SweepSpec, trials: list[Trial], trained: dict[str, TrainedExpert],
                 failures: dict[str, str]) -> SweepResult:
    """Score every trained trial (blobs from the pipeline's store) on `data`'s validation split in one
    shared-prefix pass (`sequence_logprobs`: the frozen layers below all trials run once) and rank them."""
    items = validation_items(data, sweep.max_val_items)
    backbone = load_backbone(spec.backbone, device=spec.eval.device)
    model, store = CCoEModel(backbone), BlobStore(spec.storage)
    for name, result in trained.items():
        model.push_expert(expert_from_bytes(fetch_blob(store, result.entry), backbone, sha256=result.entry.sha256, name=name))
    gold = sequence_logprobs(model, backbone.tokenizer, [(it["prompt"], it["response"]) for it in items], list(trained), data,
                             spec.eval.batch_size)
    return rank_trials(trials, {name: ((-s).tolist(), c.tolist()) for name, (s, c) in gold.items()}, failures)
