"""A small hyper-parameter sweep for one expert, chosen on its validation split, never on test items.

`SweepSpec` is a grid (learning rates x layer selections x step counts x, for the choice objective,
LM weights). `sweep_trials` turns it into one training job per point: the pipeline's job for the expert
with that point's overrides, under the name `<expert>-t<i>` (each trial is its own MLflow run and blob).
`choose_trial` scores every trained trial on the validation split that the trainer held out of the same
data (so nothing the gate or the domain report tests on is ever used for the choice) in one
shared-prefix pass, and returns the trials ranked with each one's paired interval against the best.

What ranks them: on multiple-choice data (every validation row keeps its options and answer), the
choice accuracy the scorer computes (the option with the highest length-normalised log-likelihood),
ties broken by NLL. Why: on the medical expert the two disagreed (validation n=232: the trial with the
lowest validation loss, choice_scale 5, was 0.315 accurate; choice LM weight 0.2 was 0.366 with a
higher loss). On a generate domain whose held-out rows its scorer can run (`validation_item`: code's
`>>>` examples become tests), the share of those rows each trial's greedy answer passes, ties by NLL:
what the test counts, since a likelier reference program does not say whether the answer runs (on the
two code trials, n=140, the two agreed: lr 3e-4 0.471 at validation loss 0.580, lr 1e-4 0.400 at 0.602).
On other data, where the split has gold responses but no scorer-ready fields, the NLL of the gold
response: the quantity training optimises, measured with an interval from a few dozen items.
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
from ccoe.domains.base import scorable_rows, score_choice
from ccoe.domains import DOMAINS
from ccoe.evaluate import choice_logprobs, choice_means, evaluate_domain, gold_choice_loss, sequence_logprobs
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
    choice_lm_weights: list[float] = Field(default_factory=list, description="choice objective: weights of the right option's LM loss "
                                           "(default: the expert's own)")
    max_val_items: int = Field(200, ge=4, description="validation items scored per trial")

    def points(self) -> list[tuple[float, LayerSelection, int | None, float | None]]:
        return list(itertools.product(self.learning_rates, self.layers, self.max_steps or [None], self.choice_lm_weights or [None]))


@dataclass(frozen=True)
class Trial:
    """One point of the grid and the training job that realises it."""

    name: str
    learning_rate: float
    layers: LayerSelection
    max_steps: int
    job: ExpertJobSpec
    choice_lm_weight: float | None = None

    def describe(self) -> str:
        weight = "" if self.choice_lm_weight is None else f", lm weight {self.choice_lm_weight:g}"
        return f"lr {self.learning_rate:g}, {self.layers.strategy} k={self.layers.k}, {self.max_steps} steps{weight}"


@dataclass(frozen=True)
class TrialScore:
    """A trial's validation NLL (nats/token), choice accuracy (None on data without options), and its
    paired difference to the best trial in the ranking metric (NLL: >= 0 is worse; accuracy: <= 0 is worse)."""

    trial: Trial
    val_loss: float
    versus_best: PairedDifference
    val_accuracy: float | None = None


@dataclass(frozen=True)
class SweepResult:
    """Trials ranked best first (by `accuracy` when scored, else by NLL); `n` validation items the ranking
    metric covers; failed trials by name."""

    ranked: tuple[TrialScore, ...]
    n: int
    failures: dict[str, str]
    accuracy: str = "choice accuracy"

    @property
    def best(self) -> Trial:
        return self.ranked[0].trial

    @property
    def by_accuracy(self) -> bool:
        return self.ranked[0].val_accuracy is not None

    def overrides(self) -> TrainingOverrides:
        """What to put under the expert's `training:` in the pipeline config to use the best trial."""
        best = self.best
        return TrainingOverrides(learning_rate=best.learning_rate, max_steps=best.max_steps, choice_lm_weight=best.choice_lm_weight)

    def table(self) -> list[dict]:
        return [{"trial": s.trial.name, "learning_rate": s.trial.learning_rate, "layers": f"{s.trial.layers.strategy} k={s.trial.layers.k}",
                 "max_steps": s.trial.max_steps, "choice_lm_weight": s.trial.choice_lm_weight, "val_loss": round(s.val_loss, 4),
                 "val_accuracy": None if s.val_accuracy is None else round(s.val_accuracy, 4), "vs_best": round(s.versus_best.estimate, 4),
                 "vs_best_low": round(s.versus_best.low, 4), "vs_best_high": round(s.versus_best.high, 4), "n": self.n}
                for s in self.ranked]

    def markdown(self) -> str:
        metric = self.accuracy if self.by_accuracy else "NLL"
        lines = [f"## Sweep: best {self.best.name} ({self.best.describe()}), validation {metric} on {self.n} held-out training items", "",
                 f"| trial | settings | val NLL |{' val accuracy |' if self.by_accuracy else ''} {metric} vs best [95% CI] |",
                 f"|---|---|---|{'---|' if self.by_accuracy else ''}---|"]
        for s in self.ranked:
            accuracy = f" {s.val_accuracy:.3f} |" if self.by_accuracy else ""
            lines.append(f"| {s.trial.name} | {s.trial.describe()} | {s.val_loss:.4f} |{accuracy} {s.versus_best.text(4)} |")
        if self.failures:
            lines += ["", *[f"- {name} failed: {error[-300:]}" for name, error in sorted(self.failures.items())]]
        return "\n".join(lines)


def sweep_trials(spec: PipelineSpec, plan: ExpertPlan, data: DataSpec, sweep: SweepSpec) -> list[Trial]:
    """One job per grid point: the pipeline's job for `plan` with the point's learning rate, layers,
    steps and choice LM weight. Refuses data without a validation split (nothing to choose on), and LM
    weights for an expert that does not train with the choice objective (they would change nothing)."""
    if data.val_fraction <= 0:
        raise ValueError(f"expert {plan.expert.name!r}: a sweep chooses on the validation split; give its data a val_fraction > 0")
    base = apply_overrides(spec.training, plan.training)
    if sweep.choice_lm_weights and base.objective != "choice":
        raise ValueError(f"expert {plan.expert.name!r} trains with the {base.objective!r} objective: choice_lm_weights apply to the choice objective only")
    trials = []
    for i, (lr, layers, steps, lm_weight) in enumerate(sweep.points()):
        name = f"{plan.expert.name}-t{i}"
        training = base.model_copy(update={"learning_rate": lr, "max_steps": steps or base.max_steps,
                                           "choice_lm_weight": base.choice_lm_weight if lm_weight is None else lm_weight})
        expert = plan.expert.model_copy(update={"name": name, "layers": layers})
        job = spec.job(plan.model_copy(update={"expert": expert, "training": TrainingOverrides()}), data)
        trials.append(Trial(name, lr, layers, training.max_steps, job.model_copy(update={"training": training}), lm_weight))
    return trials


def rank_trials(trials: list[Trial], item_nll: dict[str, tuple[list[float], list[float]]], failures: dict[str, str],
                confidence: float = 0.95, seed: int = 0, item_correct: dict[str, list[float]] | None = None,
                accuracy: str = "choice accuracy") -> SweepResult:
    """Rank the trained trials: by validation `accuracy` when `item_correct` is given (trial name -> (m,)
    0/1 per scored item, the same m items for every trial; ties by NLL), else by validation NLL.
    item_nll: trial name -> (per-item summed NLL, token counts), each (n,) on the same items."""
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
    if item_correct is not None:
        shares = {name: sum(item_correct[name]) / len(item_correct[name]) for name in item_nll}
        order = {t.name: (-shares[t.name], losses[t.name], t.name) for t in scored}
        best = min(scored, key=lambda t: order[t.name])
        ranked = sorted(
            (TrialScore(t, losses[t.name], paired_difference(item_correct[t.name], item_correct[best.name], binary=True, confidence=confidence,
                                                            seed=seed), shares[t.name]) for t in scored),
            key=lambda s: order[s.trial.name],
        )
        return SweepResult(tuple(ranked), len(item_correct[best.name]), failures, accuracy)
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
    shared-prefix pass (the frozen layers below all trials run once) and rank them: multiple-choice rows
    by the options' log-likelihoods (`choice_logprobs`: accuracy, and NLL of the right option); rows the
    expert's domain can score (`validation_item`) by its task metric on greedy answers; other rows by the
    NLL of the gold response (`sequence_logprobs`)."""
    items = validation_items(data, sweep.max_val_items)
    backbone = load_backbone(spec.backbone, device=spec.eval.device)
    model, store = CCoEModel(backbone), BlobStore(spec.storage)
    for name, result in trained.items():
        model.push_expert(expert_from_bytes(fetch_blob(store, result.entry), backbone, sha256=result.entry.sha256, name=name))
    domain = DOMAINS.get(trials[0].job.expert.domain)
    nll, correct = validation_scores(model, backbone.tokenizer, items, list(trained), data, spec.eval.batch_size, domain=domain,
                                     max_new_tokens=spec.eval.max_new_tokens.get(trials[0].job.expert.domain, 128))
    choice = items and all("choices" in it for it in items)
    return rank_trials(trials, nll, failures, item_correct=correct,
                       accuracy="choice accuracy" if choice else f"{trials[0].job.expert.domain} task score (greedy, the domain's scorer)")


def validation_scores(model: CCoEModel, tokenizer, items: list[dict], routes: list[str], data: DataSpec, batch_size: int,
                      domain=None, max_new_tokens: int = 128) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, list[float]] | None]:
    """Per route on `items`: (per-item summed NLL of the gold response, its token counts), and on
    multiple-choice rows (all carry `choices` and `answer`) whether the option with the highest mean
    token log-likelihood is the right one (0/1 per item, what the choice scorer counts); on rows a
    generate `domain` turns into scorable items (`validation_item`), its score of each route's greedy
    answer (0/1 per such row, generating up to `max_new_tokens`); else None."""
    if items and all("choices" in it for it in items):
        tables = choice_logprobs(model, tokenizer, items, routes, data, batch_size)
        gold = {name: gold_choice_loss("validation", name, items, *table) for name, table in tables.items()}
        return ({name: (list(score.item_nll), list(score.item_tokens)) for name, score in gold.items()},
                {name: [score_choice(item, int(row.argmax())) for item, row in zip(items, choice_means(*table))] for name, table in tables.items()})
    gold = sequence_logprobs(model, tokenizer, [(it["prompt"], it["response"]) for it in items], routes, data, batch_size)
    nll = {name: ((-s).tolist(), c.tolist()) for name, (s, c) in gold.items()}
    scorable = scorable_rows(domain, items) if domain is not None else []
    if not scorable:
        return nll, None
    scores = evaluate_domain(model, tokenizer, domain, scorable, routes, spec=data, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return nll, {name: list(scores[name].item_scores) for name in routes}
