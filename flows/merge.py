"""Prefect: pop-and-push the trained experts into the registered model as `candidate`."""

from __future__ import annotations

from prefect import flow, get_run_logger

from ccoe.config import PipelineSpec
from ccoe.manifest import TrainedExpert
from ccoe import registry
from ccoe.pipeline import merge_results, train_pipeline_router
from ccoe.registry import MergeResult


@flow(name="merge")
def merge(spec: PipelineSpec, trained: list[TrainedExpert], pops: list[str] | None = None) -> MergeResult:
    logger = get_run_logger()
    champion = registry.get_version(spec.registry, "champion")
    learned_router = train_pipeline_router(spec, trained, champion.manifest if champion else None)
    if learned_router is not None:
        logger.info("learned router %s… trained for %s: validation accuracy %.3f (n=%d)", learned_router.sha256[:12],
                    learned_router.experts, learned_router.metrics["validation_accuracy"], int(learned_router.metrics["validation_n"]))
    result = merge_results(spec, trained, list(pops or []), learned_router)
    logger.info(
        "registered %s version %d (parent %s, %d bytes uploaded, %d attempt(s)): experts %s",
        spec.registry.model_name, result.version, result.manifest.parent, result.bytes_uploaded, result.attempts, sorted(result.manifest.experts),
    )
    return result
