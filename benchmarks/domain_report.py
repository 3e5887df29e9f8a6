"""Per-domain report on a real backbone: base vs trained expert, with paired 95% intervals.

SmolLM2-135M by default; Gemma 3 270M with `--config configs/domain-experts-gemma.yaml` (`make domain-report-gemma`).

For each domain: train its expert with the budget in `configs/domain-experts.yaml` through the real
path (`train_expert`: Lightning + MLflow, into a temporary store), then score the held-out set (whole,
unless the config cuts it) under the plain backbone and under the expert in one shared-prefix pass.
The difference expert - base is a paired bootstrap interval over items (ccoe.evidence), with the
smallest difference that n can detect. Finally every expert is pushed into one CCoE model and each
expert's logits on its own prompts are compared with the model that held only that expert:
bit-identical means no other domain's scores changed.

Results go to `benchmarks/results/domains.json` (one object per domain, merged with the domains
measured before, each with its own training budget) and the markdown table rendered from it.

    python benchmarks/domain_report.py --out benchmarks/results/domains.md [--domains law medical]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import cpu_name  # noqa: E402
from ccoe.backbone import load_backbone  # noqa: E402
from ccoe.config import (  # noqa: E402
    CCoESpec, DataSpec, EvalSpec, ExpertJobSpec, TrackingSpec, TrainingOverrides, TrainingSpec, apply_overrides,
)
from ccoe.domains import DOMAINS, eval_items, train_data_spec  # noqa: E402
from ccoe.domains.base import scorable_rows, validation_scorable  # noqa: E402
from ccoe.evaluate import DomainScore, evaluate_domain  # noqa: E402
from ccoe.evidence import paired_difference  # noqa: E402
from ccoe.expert import load_expert  # noqa: E402
from ccoe.manifest import TrainedExpert  # noqa: E402
from ccoe.data import encode_prompt, validation_items  # noqa: E402
from ccoe.model import CCoEModel  # noqa: E402
from lightning_modules.train import train_expert  # noqa: E402


class DomainBudget(BaseModel):
    """One domain's departures from the report's shared budget (e.g. the choice objective for law)."""

    model_config = ConfigDict(extra="forbid")
    training: TrainingOverrides = Field(default_factory=TrainingOverrides)
    max_length: int | None = Field(None, ge=16)
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="share of the training rows held out as the validation split (by content "
                                "hash): larger for a domain whose budget is chosen on a scored validation split, so its interval can tell trials apart")
    test_looks: int = Field(1, ge=1, le=100, description="configurations of this domain's expert scored on its test set so far, this "
                            "one included (the history in the config's comments): the report adds the interval that stays valid over all of them")


def looks_adjusted(candidate: list[float], reference: list[float], looks: int) -> dict:
    """Discordant items and, over `looks` configurations scored on the same test set, the Bonferroni
    interval (confidence 1 - 0.05 / looks): {"test_looks", "expert_only", "base_only", "adjusted_low",
    "adjusted_high"}. Why: choosing among configurations by their test scores makes the best one's 95%
    interval too optimistic; the adjusted interval excludes 0 only if the winner would survive all looks."""
    diff = paired_difference(candidate, reference, binary=True, confidence=1 - 0.05 / looks)
    return {"test_looks": looks, "expert_only": sum(1 for a, b in zip(candidate, reference) if a > b),
            "base_only": sum(1 for a, b in zip(candidate, reference) if a < b),
            "adjusted_low": round(diff.low, 4), "adjusted_high": round(diff.high, 4)}


class ReportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: CCoESpec
    training: TrainingSpec
    max_length: int = 384
    eval: EvalSpec
    domains: dict[str, DomainBudget] = Field(default_factory=dict)

    def own(self, domain: str) -> DomainBudget:
        """`domain`'s departures from the shared budget (none when the config names none)."""
        return self.domains.get(domain, DomainBudget())

    def budget(self, domain: str) -> tuple[TrainingSpec, int]:
        """(training spec, training max_length) of `domain`: the shared budget with its overrides."""
        own = self.own(domain)
        return apply_overrides(self.training, own.training), own.max_length or self.max_length


def validation_comparison(model: CCoEModel, tokenizer, domain, data: DataSpec, expert: str, spec: DataSpec, evaluation: EvalSpec) -> dict | None:
    """Base vs `expert` on the validation split the trainer held out of `data`, scored and paired like
    the held-out test set (a generate domain: on the rows its `validation_item` can score, generating with
    the test set's token budget); None for a domain with no validation metric (`validation_scorable`).

    Why report it: a test set of ~100 items detects only differences of ~0.15-0.19, so an in-distribution
    gain on the validation split with a narrower interval tells an under-powered test from an expert that
    learned nothing. It is not untuned data: budgets (e.g. law's step count) were chosen on it."""
    if not validation_scorable(domain):
        return None
    items = scorable_rows(domain, validation_items(data))
    scores = evaluate_domain(model, tokenizer, domain, items, [None, expert], spec=spec, batch_size=evaluation.batch_size,
                             generation_batch_size=evaluation.generation_batch_size, max_new_tokens=evaluation.max_new_tokens.get(domain.name, 128), progress=True)
    diff = paired_difference(scores[expert].item_scores, scores[None].item_scores, binary=True)
    return {"n": len(items), "base": round(scores[None].metric, 4), "expert": round(scores[expert].metric, 4), "diff": round(diff.estimate, 4),
            "diff_low": round(diff.low, 4), "diff_high": round(diff.high, 4)}


def failure_tally(domain, items: list[dict], base: DomainScore, expert: DomainScore) -> dict[str, dict[str, int]] | None:
    """{"base": {kind: items}, "expert": {...}}: why each route's generated answers fail, for a domain that
    can tell (`CodeDomain.failure`: the exception that ended the program); None for the others."""
    failure = getattr(domain, "failure", None)
    if failure is None:
        return None
    return {side: dict(Counter(failure(item, text) for item, text in zip(items, score.item_outputs)).most_common())
            for side, score in (("base", base), ("expert", expert))}


@dataclass(frozen=True)
class TrainedDomain:
    """One domain's expert trained with the report's budget: its job, the model holding only it, and where it is."""

    job: ExpertJobSpec
    model: CCoEModel
    result: TrainedExpert
    train_s: float
    budget: dict


def train_domain(spec: ReportSpec, backbone, expert_spec, work: Path) -> TrainedDomain:
    """Train `expert_spec` through the real path (`train_expert`: Lightning + MLflow) with its domain's budget."""
    training, max_length = spec.budget(expert_spec.domain)
    job = ExpertJobSpec(
        backbone=spec.model.backbone, expert=expert_spec,
        data=train_data_spec(expert_spec.domain, max_length=max_length, val_fraction=spec.own(expert_spec.domain).val_fraction),
        training=training, tracking=TrackingSpec(root=str(work / "mlruns")), output_dir=str(work / "experts"),
    )
    t0 = time.perf_counter()
    result = train_expert(job)
    train_s = time.perf_counter() - t0
    model = CCoEModel(backbone)
    model.push_expert(load_expert(result.blob_path, backbone, sha256=result.entry.sha256))
    return TrainedDomain(job, model, result, train_s, budget_row(expert_spec, training, max_length))


def budget_row(expert_spec, training: TrainingSpec, max_length: int) -> dict:
    """The training budget a row records: layers, steps, batch, lr, length, objective (and the choice
    objective's scale and LM weight, which trials vary)."""
    budget = {"layers": f"{expert_spec.layers.strategy} k={expert_spec.layers.k}", "steps": training.max_steps, "batch_size": training.batch_size,
              "learning_rate": training.learning_rate, "max_length": max_length, "objective": training.objective}
    if training.objective == "choice":
        budget |= {"choice_scale": training.choice_scale, "choice_lm_weight": training.choice_lm_weight}
    return budget


def validation_run(spec: ReportSpec, work: Path, domains: list[str]) -> list[dict]:
    """Train each named domain's expert and score it on its validation split only, never on the test set.

    Why: a budget (learning rate, steps, layers) is chosen on validation; trying one this way costs no look
    at the test items, so `test_looks` stays as it is. Choice domains and code (`validation_scorable`) have a
    validation metric; naming another domain is refused before training."""
    unscorable = sorted(d for d in domains if not validation_scorable(DOMAINS[d]))
    if unscorable:
        raise ValueError(f"no validation metric for {', '.join(unscorable)} (generate domains whose training rows carry no scorer's "
                         "fields): leave them out of --domains with --validation-only")
    backbone = load_backbone(spec.model.backbone)
    rows = []
    for expert_spec in [e for e in spec.model.experts if e.domain in domains]:
        trained = train_domain(spec, backbone, expert_spec, work)
        t0 = time.perf_counter()
        val = validation_comparison(trained.model, backbone.tokenizer, DOMAINS[expert_spec.domain], trained.job.data, expert_spec.name,
                                    DataSpec(records=[], max_length=spec.eval.max_length), spec.eval)
        rows.append({"domain": expert_spec.domain, "budget": trained.budget, "val": val, "train_s": round(trained.train_s),
                     "val_s": round(time.perf_counter() - t0), "cpu": cpu_name()})
        print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def choice_text(budget: dict) -> str:
    """", scale S, lm weight W" for a budget that records the choice objective's knobs (rows measured since they were recorded), else ""."""
    return f", scale {budget['choice_scale']:g}, lm weight {budget['choice_lm_weight']:g}" if "choice_scale" in budget else ""


def validation_lines(rows: list[dict]) -> str:
    """One line per validation trial: budget, base -> expert and the paired interval."""
    return "\n".join(
        f"- {r['domain']} ({r['budget']['layers']}, {r['budget']['steps']} x {r['budget']['batch_size']}, lr {r['budget']['learning_rate']:g}, "
        f"{r['budget']['objective']}{choice_text(r['budget'])}): validation n={r['val']['n']}, base {r['val']['base']:.3f} -> expert {r['val']['expert']:.3f}, "
        f"{r['val']['diff']:+.3f} [{r['val']['diff_low']:+.3f}, {r['val']['diff_high']:+.3f}]; train {r['train_s']} s ({r['cpu']})"
        for r in rows)


def validation_section(trials: list[dict]) -> str:
    """The BENCHMARKS.md section of every `--validation-only` trial so far, in the order they ran."""
    return "\n".join([
        "## Budget trials on the validation split (no test look)", "",
        "Each line: one expert trained with that budget by `benchmarks/domain_report.py --validation-only` and scored, with the",
        "base, on the validation split the trainer held out of its training data (paired 95% interval); the test set is not",
        "scored, so a trial adds no `test_looks`. Only the budget that wins here is then scored on the test (the Domains table).", "",
        validation_lines(trials), ""])


def run(spec: ReportSpec, work: Path, domains: list[str]) -> list[dict]:
    backbone = load_backbone(spec.model.backbone)
    rows, singles = [], {}
    for expert_spec in [e for e in spec.model.experts if e.domain in domains]:
        trained = train_domain(spec, backbone, expert_spec, work)
        model, result, job = trained.model, trained.result, trained.job
        domain = DOMAINS[expert_spec.domain]
        items = eval_items(domain.name)[: spec.eval.max_items.get(domain.name)]
        t0 = time.perf_counter()
        scores = evaluate_domain(
            model, backbone.tokenizer, domain, items, [None, expert_spec.name],
            spec=DataSpec(records=[], max_length=spec.eval.max_length), batch_size=spec.eval.batch_size,
            generation_batch_size=spec.eval.generation_batch_size,
            max_new_tokens=spec.eval.max_new_tokens.get(domain.name, 128), progress=True,
        )
        base, tuned = scores[None], scores[expert_spec.name]
        diff = paired_difference(tuned.item_scores, base.item_scores, binary=True)
        tokens = [max(t, 1.0) for t in base.item_tokens]
        nll = paired_difference([x / t for x, t in zip(tuned.item_nll, tokens)], [x / t for x, t in zip(base.item_nll, tokens)], tokens).flipped()
        rows.append({
            "domain": domain.name, "expert_name": expert_spec.name, "metric": domain.card.metric, "n": len(items), "base": round(base.metric, 4), "expert": round(tuned.metric, 4),
            "diff": round(diff.estimate, 4), "diff_low": round(diff.low, 4), "diff_high": round(diff.high, 4), "detectable": round(diff.detectable, 4),
            "base_loss": round(base.loss, 4), "expert_loss": round(tuned.loss, 4),
            "loss_decrease_low": round(nll.low, 4), "loss_decrease_high": round(nll.high, 4),
            "budget": trained.budget, "train_s": round(trained.train_s), "eval_s": round(time.perf_counter() - t0), "cpu": cpu_name(),
        })
        rows[-1]["failures"] = failure_tally(domain, items, base, tuned)
        rows[-1].update(looks_adjusted(tuned.item_scores, base.item_scores, spec.own(domain.name).test_looks))
        t0 = time.perf_counter()
        rows[-1]["val"] = validation_comparison(model, backbone.tokenizer, domain, job.data, expert_spec.name,
                                                DataSpec(records=[], max_length=spec.eval.max_length), spec.eval)
        rows[-1]["val_s"] = round(time.perf_counter() - t0)
        singles[expert_spec.name] = (result.blob_path, result.entry.sha256, items[:4])
        print(f"  {rows[-1]}", file=sys.stderr)
    combined = CCoEModel(backbone)
    for path, sha, _ in singles.values():
        combined.push_expert(load_expert(path, backbone, sha256=sha))
    for row in rows:
        path, sha, probe = singles[row["expert_name"]]
        alone = CCoEModel(backbone)
        alone.push_expert(load_expert(path, backbone, sha256=sha))
        ids = torch.tensor([encode_prompt(backbone.tokenizer, probe[0]["prompt"])])
        with torch.no_grad():
            row["isolated"] = torch.equal(alone(ids, expert=row["expert_name"]).logits, combined(ids, expert=row["expert_name"]).logits)
    return rows


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """The domains measured now, plus those in `path` measured before (each row keeps its own budget)."""
    kept = json.loads(path.read_text()) if path.exists() else []
    fresh = {r["domain"] for r in rows}
    return sorted([r for r in kept if r["domain"] not in fresh] + rows, key=lambda r: r["domain"])


BACKBONE_NAMES = {"smollm2-135m-instruct": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}


def report(rows: list[dict], backbone: str = "smollm2-135m-instruct") -> str:
    lines = [
        f"## Domains: base {BACKBONE_NAMES.get(backbone, backbone)} vs its domain expert (real backbone, CPU)", "",
        "Each expert trained through `train_expert` (Lightning + MLflow) with the budget in its row; scored on the held-out",
        "set (n items, never trained on); metrics as in the data cards (README). Difference = expert - base on the same",
        "items, with a paired 95% interval (`ccoe.evidence`: bootstrap over items, widened to McNemar's exact interval for",
        "0/1 metrics, so it excludes 0 only when the exact test rejects); *detectable* = the smallest difference this",
        "n finds with 80% power. NLL = mean NLL of the gold response tokens; its interval is of the decrease.", "",
        "| domain | n | base | expert | expert - base [95% CI] | detectable | NLL base -> expert (decrease CI) | budget | train s | eval s | others bit-identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["budget"]
        lines.append(
            f"| {r['domain']} | {r['n']} | {r['base']:.3f} | {r['expert']:.3f} | {r['diff']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}] | "
            f"{r['detectable']:.3f} | {r['base_loss']:.3f} -> {r['expert_loss']:.3f} ([{r['loss_decrease_low']:+.3f}, {r['loss_decrease_high']:+.3f}]) | "
            f"{b['layers']}, {b['steps']} x {b['batch_size']}, lr {b['learning_rate']:g}{', ' + b['objective'] + ' objective' + choice_text(b) if b.get('objective', 'lm') != 'lm' else ''} | {r['train_s']} | {r['eval_s']} | "
            f"{'yes' if r.get('isolated') else 'NO'} |")
    above = [r["domain"] for r in rows if r["diff_low"] > 0]
    unclear = [r["domain"] for r in rows if r["diff_low"] <= 0 <= r["diff_high"]]
    below = [r["domain"] for r in rows if r["diff_high"] < 0]
    lines += [
        "", f"- Expert significantly above the base (interval above 0): {', '.join(above) or 'none'}"
        + (" (all: goal met)." if len(above) == len(rows) and not set(DOMAINS) - {r["domain"] for r in rows}
           else f"; **goal missed** for {', '.join(unclear + below)}." if unclear + below else "; the rest are not measured yet."),
        f"- No measurable change: {', '.join(unclear) or 'none'}; significantly below the base: {', '.join(below) or 'none'}.",
        f"- Measured on: {', '.join(sorted({r['cpu'] for r in rows}))}."
        + (f" Not measured yet with this report: {', '.join(sorted(set(DOMAINS) - {r['domain'] for r in rows}))}." if set(DOMAINS) - {r["domain"] for r in rows} else ""),
    ] + [f"- {r['domain']}: {r['note']}." for r in rows if r.get("note")] + [
        f"- {r['domain']}: {r['expert_only']} items right only under the expert, {r['base_only']} only under the base; {r['test_looks']} "
        f"configurations of this expert scored on this test set so far, so over those looks (Bonferroni, {100 - 5 / r['test_looks']:.2f}%): "
        f"[{r['adjusted_low']:+.3f}, {r['adjusted_high']:+.3f}]."
        for r in rows if r.get("test_looks", 1) > 1] + [
        f"- {r['domain']} on its validation split (n={v['n']}, held out of training but used to choose the budget, so not untuned): "
        f"base {v['base']:.3f} -> expert {v['expert']:.3f}, {v['diff']:+.3f} [{v['diff_low']:+.3f}, {v['diff_high']:+.3f}]."
        for r in rows if (v := r.get("val"))] + [
        f"- {r['domain']}, what ended each program (base -> expert): "
        + "; ".join(f"{kind} {f['base'].get(kind, 0)} -> {f['expert'].get(kind, 0)}" for kind in dict.fromkeys([*f["base"], *f["expert"]])) + "."
        for r in rows if (f := r.get("failures"))] + [
        "- \"Others bit-identical\": each expert's logits in the model holding all experts equal those in a model",
        "  holding only it, so adding the other domains' experts changed none of this domain's scores.", "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path(__file__).resolve().parent.parent / "configs" / "domain-experts.yaml")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/domains.md"))
    p.add_argument("--domains", nargs="*", default=sorted(DOMAINS))
    p.add_argument("--validation-only", action="store_true",
                   help="train and score on the validation split only (choice domains), appending to benchmarks/results/validation-trials.json: "
                        "for choosing a budget without a look at the test set")
    args = p.parse_args()
    import yaml

    spec = ReportSpec.model_validate(yaml.safe_load(args.config.read_text()))
    if args.validation_only:
        with tempfile.TemporaryDirectory(prefix="ccoe-domain-validation-") as tmp:
            rows = validation_run(spec, Path(tmp), args.domains)
        log = Path(__file__).resolve().parent / "results" / "validation-trials.json"
        trials = (json.loads(log.read_text()) if log.exists() else []) + rows
        log.write_text(json.dumps(trials, indent=2) + "\n")
        log.with_suffix(".md").write_text(validation_section(trials))
        print(validation_lines(rows))
        return
    with tempfile.TemporaryDirectory(prefix="ccoe-domain-report-") as tmp:
        rows = run(spec, Path(tmp), args.domains)
    table = args.out.with_suffix(".json")
    rows = merge_rows(table, rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(json.dumps(rows, indent=2) + "\n")
    text = report(rows, spec.model.backbone.source)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
