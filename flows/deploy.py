"""Register the deployments users drive from the Prefect UI.

- `train-expert`: one expert job (what production `train-experts` fans out onto GPU nodes);
- `retrain-expert`: retrain one expert, merge, evaluate, gate — typed parameters (expert name, data
  source, hyper-parameter overrides) so the UI renders a form;
- `pipeline`: the continual update, on a cron schedule; experts whose data is unchanged since the
  champion are skipped.

    python -m flows.deploy --work-pool ccoe [--config configs/demo.yaml] [--cron "30 2 * * *"]
    python -m flows.deploy --serve          # no work pool: this process runs the deployments' flow runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import serve
from prefect.schedules import Cron

from flows.pipeline import pipeline, retrain_expert
from flows.train import train_expert_flow

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINTS = {
    "train-expert": "flows/train.py:train_expert_flow",
    "retrain-expert": "flows/pipeline.py:retrain_expert",
    "pipeline": "flows/pipeline.py:pipeline",
}


def deploy_to_pool(work_pool: str, config: str, cron: str | None, timezone: str = "UTC", source: Path = REPO) -> dict[str, str]:
    """Create or update the three deployments on `work_pool`; returns {name: deployment id}."""
    from prefect import Flow

    ids = {}
    for name, entrypoint in ENTRYPOINTS.items():
        flow = Flow.from_source(source=str(source), entrypoint=entrypoint)
        parameters = {} if name == "train-expert" else {"config": config}
        schedules = [Cron(cron, timezone=timezone)] if cron and name == "pipeline" else None
        ids[name] = str(flow.deploy(name=name, work_pool_name=work_pool, build=False, push=False, parameters=parameters,
                                    schedules=schedules, print_next_steps=False, tags=["ccoe"]))
    return ids


def serve_here(config: str, cron: str | None, timezone: str = "UTC") -> None:
    """Serve the deployments from this process (no work pool or worker needed)."""
    serve(
        train_expert_flow.to_deployment(name="train-expert", tags=["ccoe"]),
        retrain_expert.to_deployment(name="retrain-expert", parameters={"config": config}, tags=["ccoe"]),
        pipeline.to_deployment(name="pipeline", parameters={"config": config}, tags=["ccoe"],
                               schedules=[Cron(cron, timezone=timezone)] if cron else None),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--work-pool", help="deploy onto this work pool (process, kubernetes, ...)")
    where.add_argument("--serve", action="store_true", help="serve the deployments from this process")
    p.add_argument("--config", default="configs/demo.yaml", help="PipelineSpec the retrain/pipeline runs read")
    p.add_argument("--cron", default="30 2 * * *", help="schedule of the continual `pipeline` deployment ('' for none)")
    p.add_argument("--timezone", default="UTC")
    args = p.parse_args(argv)
    if args.serve:
        serve_here(args.config, args.cron or None, args.timezone)
    else:
        for name, deployment_id in deploy_to_pool(args.work_pool, args.config, args.cron or None, args.timezone).items():
            print(f"{name}: {deployment_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
