"""Prefect: score base, champion and candidate; the gate promotes to `champion` only if earned.

The decision and its reasons go to the registry version's tags, to an MLflow run (metrics per domain
and model, a PNG bar chart, the table as JSON) and to Prefect table and markdown artifacts.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ccoe import registry
from ccoe.config import PipelineSpec
from ccoe.gate import bar_chart
from ccoe.pipeline import apply_decision, evaluate_candidate, markdown_report


@flow(name="evaluate")
def evaluate(spec: PipelineSpec, version: int, retrained: list[str], train_run_ids: list[str] | None = None) -> dict:
    logger = get_run_logger()
    started = time.perf_counter()
    evaluation = evaluate_candidate(spec, version, retrained, report=logger.info)
    seconds = time.perf_counter() - started
    decision = evaluation.decision
    with tempfile.TemporaryDirectory() as tmp:
        chart = bar_chart(evaluation.rows, Path(tmp) / "gate.png", f"{spec.registry.model_name} v{version}: {'promoted' if decision.promote else 'rejected'}")
        table = Path(tmp) / "scores.json"
        table.write_text(json.dumps(evaluation.rows, indent=2))
        metrics = {f"{r['domain']}/{label}": r[f"{label}_metric"] for r in evaluation.rows for label in ("base", "champion", "candidate")
                   if r[f"{label}_metric"] is not None}
        metrics |= {f"{r['domain']}/{key}": r[key] for r in evaluation.rows for key in ("diff", "diff_low", "diff_high") if r[key] is not None}
        metrics["router_accuracy"] = evaluation.router_accuracy
        metrics |= {f"{domain}/eval_seconds": value for domain, value in evaluation.seconds.items()}
        run_id = registry.log_run(
            spec.registry, f"evaluate-v{version}", metrics=metrics, files=[chart, table],
            params={"version": str(version), "champion_version": str(evaluation.champion_version or ""), "retrained": ",".join(retrained)},
            tags={"ccoe.gate": "promoted" if decision.promote else "rejected", "ccoe.version": str(version),
                  "ccoe.train_runs": ",".join(train_run_ids or [])},
        )
    apply_decision(spec, evaluation, run_id)
    report = markdown_report(evaluation)
    create_table_artifact(key="ccoe-evaluation", table=evaluation.rows, description=f"scores for version {version}")
    create_markdown_artifact(key="ccoe-gate", markdown=report, description=decision.summary()[:500])
    logger.info(decision.summary())
    return {"version": version, "promote": decision.promote, "reasons": decision.reasons, "rows": evaluation.rows,
            "router_accuracy": evaluation.router_accuracy, "evaluation_run_id": run_id, "report": report, "seconds": seconds,
            "domain_seconds": evaluation.seconds}
