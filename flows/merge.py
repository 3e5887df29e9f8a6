"""Prefect: pop-and-push the trained experts into the registered model as `candidate`."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from ccoe.config import PipelineSpec
from ccoe.pipeline import merge_results


@flow(name="merge")
def merge(spec: PipelineSpec, results: list[dict], pops: list[str] | None = None) -> dict:
    started = time.perf_counter()
    result = merge_results(spec, results, list(pops or []))
    seconds = time.perf_counter() - started
    get_run_logger().info(
        "registered %s version %d (parent %s, %d bytes uploaded, %d attempt(s)): experts %s",
        spec.registry.model_name, result.version, result.manifest.parent, result.bytes_uploaded, result.attempts, sorted(result.manifest.experts),
    )
    return {"version": result.version, "parent": result.manifest.parent, "bytes_uploaded": result.bytes_uploaded,
            "experts": sorted(result.manifest.experts), "seconds": seconds}
