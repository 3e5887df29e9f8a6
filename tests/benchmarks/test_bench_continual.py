"""The continual benchmark's two pipelines per round (benchmarks/bench_continual.py)."""

from pathlib import Path

from benchmarks.bench_continual import variants
from ccoe.config import PipelineSpec, load_yaml

CONFIG = Path(__file__).resolve().parent.parent.parent / "configs" / "continual.yaml"


def test_scratch_retrains_from_the_backbone_with_steps_growing_and_continued_keeps_its_budget(tmp_path):
    spec = load_yaml(PipelineSpec, CONFIG)
    for round_ in (1, 3):
        pair = variants(spec, tmp_path, tmp_path / "shards", round_)
        continued, scratch = pair["continued"], pair["scratch"]
        assert continued.experts[0].init == "champion" and scratch.experts[0].init == "backbone"
        assert continued.job(continued.experts[0], continued.experts[0].data).training.max_steps == spec.training.max_steps
        assert scratch.job(scratch.experts[0], scratch.experts[0].data).training.max_steps == spec.training.max_steps * round_
        assert continued.experts[0].shards.location.uri == scratch.experts[0].shards.location.uri == str(tmp_path / "shards")
        assert continued.registry.tracking.root != scratch.registry.tracking.root and continued.storage != scratch.storage
