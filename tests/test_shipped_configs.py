"""Every file in configs/ loads as the model it is for, and per-expert overrides are validated."""

from pathlib import Path

import pytest
import yaml

from benchmarks.domain_report import ReportSpec
from ccoe.config import CCoESpec, ExpertJobSpec, PipelineSpec, PlannerSpec, RouterSpec, ServeSpec, TrainingOverrides, TrainingSpec, load_pipeline, load_yaml
from ccoe.pipeline import data_for

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KINDS = {
    "cluster.yaml": PipelineSpec, "demo.yaml": PipelineSpec, "tiny.yaml": PipelineSpec, "router.yaml": RouterSpec,
    "runtime-demo.yaml": CCoESpec, "train-expert-example.yaml": ExpertJobSpec, "domain-experts.yaml": ReportSpec,
    "planner.yaml": PlannerSpec, "serve.yaml": ServeSpec, "continual.yaml": PipelineSpec, "demo-gemma.yaml": PipelineSpec, "domain-experts-gemma.yaml": ReportSpec,
}


def test_every_shipped_config_is_known():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_shipped_config_loads(name):
    kind = KINDS[name]
    spec = kind.model_validate(yaml.safe_load((CONFIGS / name).read_text())) if kind is ReportSpec else load_yaml(kind, CONFIGS / name)
    if isinstance(spec, PipelineSpec):  # and every expert's job validates, overrides applied
        for plan in spec.experts:
            job = spec.job(plan, data_for(spec, plan))
            assert job.training == TrainingSpec.model_validate({**spec.training.model_dump(), **plan.training.model_dump(exclude_none=True)})


def test_the_shipped_planner_config_is_the_built_in_default():
    assert load_yaml(PlannerSpec, CONFIGS / "planner.yaml") == PlannerSpec()


def test_the_demo_overrides_are_applied():
    spec = load_pipeline(CONFIGS / "demo.yaml", {})
    steps = {p.expert.name: spec.job(p, data_for(spec, p)).training.max_steps for p in spec.experts}
    assert spec.training.max_steps == 30
    assert steps == {"math": 30, "code": 20, "law": 20, "medical": 30, "sql": 40}


def _pipeline_with_overrides(tmp_path, overrides: str) -> Path:
    text = (CONFIGS / "tiny.yaml").read_text()
    data = yaml.safe_load(text)
    data["experts"][0]["training"] = yaml.safe_load(overrides)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_unknown_override_key_fails_at_load_with_the_key_named(tmp_path):
    with pytest.raises(ValueError, match=r"experts\.0\.training\.max_step\n  Extra inputs are not permitted"):
        load_pipeline(_pipeline_with_overrides(tmp_path, "{max_step: 5}"), {})


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    assert yaml.safe_load("{learning_rate: 1e-4}") == {"learning_rate": "1e-4"}  # PyYAML's reading, the trap
    spec = load_pipeline(_pipeline_with_overrides(tmp_path, "{max_steps: 5, learning_rate: 1e-4}"), {})
    plan = spec.experts[0]
    training = spec.job(plan, data_for(spec, plan)).training
    assert (training.max_steps, training.learning_rate) == (5, 1e-4) and isinstance(training.learning_rate, float)


def test_overrides_keep_the_specs_constraints():
    with pytest.raises(ValueError, match="greater than 0"):
        TrainingOverrides(learning_rate=0)
    assert set(TrainingOverrides.model_fields) == set(TrainingSpec.model_fields)


def test_only_strategies_that_load_checkpoints_through_the_safe_plugin_are_accepted():
    assert TrainingSpec(strategy="ddp").strategy == "ddp"
    with pytest.raises(ValueError, match="training strategy 'fsdp' is not supported"):  # FSDP resumes with its own unpickler
        TrainingSpec(strategy="fsdp")
