"""Prefect: pop-and-push the trained experts into the registered model as `candidate`."""

from __future__ import annotations

from prefect import flow, get_run_logger

from ccoe.config import PipelineSpec
from ccoe.manifest import TrainedExpert
from ccoe.pipeline import merge_results
from ccoe.registry import MergeResult


@flow(name="merge")
def merge(spec: PipelineSpec, trained: list[TrainedExpert], pops: list[str] | None = None) -> MergeResult:
    result = merge_results(spec, trained, list(pops or []))
    get_run_logger().info(
        "registered %s version %d (parent %s, %d bytes uploaded, %d attempt(s)): experts %s",
        spec.registry.model_name, result.version, result.manifest.parent, result.bytes_uploaded, result.attempts, sorted(result.manifest.experts),
    )
    return result
