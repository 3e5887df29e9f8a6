"""Prefect: the pipeline (train -> merge -> evaluate) and `retrain-expert` (the same for one expert).

    python -m flows.pipeline --config configs/demo.yaml          # `make demo`
    python -m flows.pipeline --config configs/demo.yaml --only law

With no Prefect server configured, flows run on Prefect's ephemeral local API; MLflow uses the sqlite
file and artifact folder of the config; blobs go to the configured folder. `CCOE_TRACKING_URI`,
`CCOE_STORAGE_URI`, `CCOE_S3_ENDPOINT_URL` (see ccoe.config.load_pipeline) point the same config at
real services: the local stack's env file sets them (`make stack-up`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Literal

from prefect import flow, get_run_logger

from ccoe import registry
from ccoe.config import DataSpec, PipelineSpec, TrainingOverrides, apply_overrides, load_pipeline
from ccoe.pipeline import plan_jobs, wall_split, write_spec
from flows.evaluate import evaluate
from flows.merge import merge
from flows.train import with_slots


def run_pipeline(spec: PipelineSpec, only: list[str] | None = None) -> dict:
    """Train what changed, merge it into the registry, evaluate and gate. Call inside a flow."""
    logger = get_run_logger()
    champion = registry.get_version(spec.registry, "champion")
    planned = plan_jobs(spec, champion.manifest if champion else None, only)
    skipped = {p.plan.expert.name: p.skip_reason for p in planned if p.skip_reason}
    unreadable = {p.plan.expert.name: p.error for p in planned if p.error}
    for name, reason in {**skipped, **unreadable}.items():
        logger.info("expert %s: %s", name, reason)
    for p in planned:
        if p.note and not p.skip_reason:
            logger.info("expert %s: %s", p.plan.expert.name, p.note)
    jobs = [p.job for p in planned if p.job is not None and not p.skip_reason]
    if not jobs and unreadable:
        raise RuntimeError(f"no expert could be trained: {unreadable}")
    if not jobs:
        logger.info("nothing to retrain: every expert's data is unchanged since champion version %s", champion.version if champion else None)
        return {"trained": [], "skipped": skipped, "failures": {}, "version": None, "promote": None}
    write_spec(spec, spec.work_dir)
    started = time.perf_counter()
    trained = with_slots(spec)(spec, jobs)
    train_wall = time.perf_counter() - started
    failures = {**trained.failures, **unreadable}
    if not trained.results:
        raise RuntimeError(f"every expert job failed: {failures}")
    started = time.perf_counter()
    merged = merge(spec, list(trained.results))
    merge_s = time.perf_counter() - started
    names, run_ids = [t.name for t in trained.results], [t.entry.run_id for t in trained.results]
    evaluated = evaluate(spec, merged.version, names, run_ids)
    return {"trained": names, "skipped": skipped, "failures": failures,
            "version": merged.version, "promote": evaluated["promote"], "report": evaluated["report"], "rows": evaluated["rows"],
            "evaluation_run_id": evaluated["evaluation_run_id"], "train_run_ids": run_ids,
            "timings": {"train_jobs_s": {t.name: t.seconds for t in trained.results}, "train_wall_s": train_wall,
                        "merge_s": merge_s, "evaluate_s": evaluated["seconds"],
                        "evaluate_domains_s": evaluated["domain_seconds"]}}


@flow(name="pipeline")
def pipeline(config: str = "configs/demo.yaml", only: list[str] | None = None) -> dict:
    """Continual update: retrain experts whose data changed, merge, evaluate, promote if earned."""
    return run_pipeline(load_pipeline(config), only)


@flow(name="retrain-expert")
def retrain_expert(expert: str, config: str = "configs/demo.yaml", data_source: str | None = None,
                   overrides: TrainingOverrides | None = None, init: Literal["backbone", "champion"] | None = None) -> dict:
    """Retrain one expert (optionally on new data, with overrides), merge, evaluate, gate. `init`:
    start from the backbone's layers or continue the champion's expert (default: the config's)."""
    spec = load_pipeline(config)
    names = [p.expert.name for p in spec.experts]
    if expert not in names:
        raise ValueError(f"unknown expert {expert!r}; {config} defines {names}")
    plans = []
    for plan in spec.experts:
        if plan.expert.name == expert:
            update = {"training": apply_overrides(plan.training, overrides)} | ({"init": init} if init else {})
            if data_source:
                update |= {"data": DataSpec(source=data_source, max_length=spec.max_length, val_fraction=0.05), "shards": None}
            plan = plan.model_copy(update=update)
        plans.append(plan)
    return run_pipeline(spec.model_copy(update={"experts": plans, "skip_unchanged": False}), only=[expert])


def timing_line(timings: dict, total_s: float) -> str:
    """Where the wall time went (ccoe.pipeline.wall_split), as one line."""
    t = wall_split(timings, total_s)
    return (f"\nWall {total_s / 60:.1f} min: training {t['train_s'] / 60:.1f} min (in the jobs), merge {t['merge_s']:.0f} s, "
            f"evaluation {t['evaluate_s'] / 60:.1f} min, orchestration and start-ups {t['orchestration_s'] / 60:.1f} min "
            f"({t['orchestration_s'] / total_s:.0%})")


PLANNED_EXAMPLE = "How many customers are from Brazil? Call the answer N. There are N boxes with 6 pens in each box. How many pens are there in all?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the CCoE pipeline (train -> merge -> evaluate -> gate)")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--only", nargs="*", help="experts to consider (default: all)")
    args = p.parse_args(argv)
    try:
        spec = load_pipeline(args.config)
    except (ValueError, FileNotFoundError) as err:  # a bad config: one message, before any server or job starts
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    summary = pipeline(args.config, args.only)
    minutes = (time.perf_counter() - started) / 60
    print()
    print(summary.get("report") or f"Nothing retrained: {summary['skipped']}")
    if summary.get("failures"):
        print(f"\nFailed experts: {summary['failures']}")
    if summary.get("timings"):
        print(timing_line(summary["timings"], minutes * 60))
    print(f"\nPipeline finished in {minutes:.1f} min. Look at what it did:")
    if spec.tracking.tracking_uri:
        print(f"  MLflow:  open {spec.tracking.tracking_uri}")
    else:
        print(f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri {spec.tracking.store_uri()} --host 127.0.0.1 --port 5001")
    api = os.environ.get("PREFECT_API_URL")
    if api:
        print(f"  Prefect: open {api.removesuffix('/api')}")
    else:
        print("  Prefect: .venv/bin/prefect server start --host 127.0.0.1   (then open http://127.0.0.1:4200)")
    alias = "champion" if summary.get("promote") else "candidate"
    print(f"  Model:   .venv/bin/ccoe info --artifact models:/{spec.registry.model_name}@{alias} "
          f"--tracking-uri {spec.registry.tracking.store_uri()}")
    if spec.planner is not None:
        print(f"  Plan:    .venv/bin/ccoe generate --artifact models:/{spec.registry.model_name}@{alias} "
              f"--tracking-uri {spec.registry.tracking.store_uri()} --plan \"{PLANNED_EXAMPLE}\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
