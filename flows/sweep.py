"""Prefect: sweep one expert's learning rate, layers, steps (and choice LM weight); choose on its validation split.

Every trial is a training job of the usual kind (its own process, its own MLflow run and blob), fanned
out like `train-experts` (`slots` at a time). The choice is made by `ccoe.sweep.choose_trial` on the
validation split held out of the expert's training data, never on the evaluation items the gate and
the domain report test on (by choice accuracy on multiple-choice data, else by NLL). The ranking goes to a Prefect
markdown artifact and to an MLflow run (`sweep-<expert>`: each trial's validation NLL and accuracy, the table as JSON); the flow returns the winning
settings to put under the expert's `training:` and `layers:` in the pipeline config.

    python -m flows.sweep --expert math --config configs/demo.yaml --lr 5e-5 1e-4 2e-4 --layers top:8 global:8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from ccoe import registry
from ccoe.config import LayerSelection, load_pipeline
from ccoe.pipeline import data_for
from ccoe.sweep import SweepSpec, choose_trial, sweep_trials
from flows.train import with_slots


@flow(name="sweep-expert")
def sweep_expert(expert: str, sweep: SweepSpec, config: str = "configs/demo.yaml") -> dict:
    """Train one trial per grid point of `sweep` for `expert`, rank them on the validation split, report the best."""
    logger = get_run_logger()
    spec = load_pipeline(config)
    plans = {p.expert.name: p for p in spec.experts}
    if expert not in plans:
        raise ValueError(f"unknown expert {expert!r}; {config} defines {sorted(plans)}")
    data = data_for(spec, plans[expert])
    trials = sweep_trials(spec, plans[expert], data, sweep)
    registry.training_store(spec.tracking)  # create the store and experiment once, before sibling jobs race to migrate it
    logger.info("sweep of %s: %d trials: %s", expert, len(trials), "; ".join(f"{t.name}: {t.describe()}" for t in trials))
    trained = with_slots(spec)(spec, [t.job for t in trials])
    result = choose_trial(spec, data, sweep, trials, {r.name: r for r in trained.results}, trained.failures)
    report = result.markdown()
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "sweep.json"
        table.write_text(json.dumps(result.table(), indent=2))
        run_id = registry.log_run(spec.registry, f"sweep-{expert}", files=[table],
                                  metrics={f"{s.trial.name}/val_loss": s.val_loss for s in result.ranked}
                                  | {f"{s.trial.name}/val_accuracy": s.val_accuracy for s in result.ranked if s.val_accuracy is not None},
                                  params={"expert": expert, "best": result.best.name, "best_settings": result.best.describe()},
                                  tags={"ccoe.sweep": expert, "ccoe.train_runs": ",".join(r.entry.run_id or "" for r in trained.results)})
    create_markdown_artifact(key=f"ccoe-sweep-{expert}", markdown=report, description=f"sweep of {expert}: best {result.best.describe()}")
    logger.info(report)
    return {"best": result.best.name, "settings": result.best.describe(), "layers": result.best.layers.model_dump(),
            "training": result.overrides().model_dump(exclude_none=True), "table": result.table(), "failures": result.failures,
            "run_id": run_id, "report": report}


def _layers(text: str) -> LayerSelection:
    strategy, _, k = text.partition(":")
    return LayerSelection(strategy=strategy, k=int(k))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--expert", required=True)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--lr", type=float, nargs="+", required=True)
    p.add_argument("--layers", type=_layers, nargs="+", required=True, help="STRATEGY:K, e.g. top:8 global:8")
    p.add_argument("--steps", type=int, nargs="*", default=[])
    p.add_argument("--choice-lm-weights", type=float, nargs="*", default=[], help="choice objective only: weights of the right option's LM loss")
    args = p.parse_args()
    sweep = SweepSpec(learning_rates=args.lr, layers=args.layers, max_steps=args.steps, choice_lm_weights=args.choice_lm_weights)
    summary = sweep_expert(args.expert, sweep, args.config)
    print(summary["report"])
    print(f"\nPut under expert {args.expert!r} in {args.config}: layers: {summary['layers']}, training: {summary['training']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
