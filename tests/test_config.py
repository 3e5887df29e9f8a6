"""Config loading: services from CCOE_* variables override a config file's embedded defaults."""

import re

import pytest

from ccoe.config import REGISTRY_EXPERIMENT, ExpertSpec, PipelineSpec, check_name, load_pipeline


def test_service_variables_point_a_config_at_real_services():
    env = {"CCOE_TRACKING_URI": "http://127.0.0.1:5000", "CCOE_STORAGE_URI": "s3://ccoe/blobs",
           "CCOE_S3_ENDPOINT_URL": "http://127.0.0.1:8333", "CCOE_S3_REGION": "us-east-1"}
    spec = load_pipeline("configs/tiny.yaml", env)
    assert spec.tracking.tracking_uri == spec.registry.tracking.tracking_uri == "http://127.0.0.1:5000"
    assert (spec.storage.uri, spec.storage.endpoint_url, spec.storage.region) == ("s3://ccoe/blobs", "http://127.0.0.1:8333", "us-east-1")
    assert (spec.registry.model_name, spec.training.max_steps) == ("ccoe_tiny", 3)  # the rest is the file's


def test_without_service_variables_the_file_is_taken_as_written():
    plain = load_pipeline("configs/tiny.yaml", {"CCOE_TRACKING_URI": ""})
    assert plain.tracking.tracking_uri is None and not plain.storage.uri.startswith("s3://")


def test_the_registry_lives_where_the_pipeline_tracks_unless_told_otherwise(tmp_path):
    spec = load_pipeline("configs/tiny.yaml", {})
    assert spec.registry.tracking == spec.tracking.model_copy(update={"experiment": REGISTRY_EXPERIMENT})
    moved = spec.with_outputs_in(tmp_path)
    assert moved.registry.tracking.root == moved.tracking.root == str(tmp_path / "mlruns")
    own = PipelineSpec.model_validate({**spec.model_dump(), "registry": {"model_name": "x", "tracking": {"tracking_uri": "http://127.0.0.1:5001"}}})
    assert (own.registry.tracking.tracking_uri, own.tracking.tracking_uri) == ("http://127.0.0.1:5001", None)
    again = PipelineSpec.model_validate(spec.model_dump())
    assert again == spec  # a saved spec (registry.tracking written out) loads back the same


def test_a_missing_config_file_is_one_clear_error():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline("configs/no-such.yaml", {})


def test_a_name_with_a_trailing_newline_is_rejected():
    assert check_name("law") == "law"
    for name in ("law\n", "law\r\n", "\nlaw", "law\n\n"):
        with pytest.raises(ValueError) as err:
            check_name(name)
        assert str(err.value) == (
            f"invalid expert name {name!r}: use a plain identifier of at most 64 characters "
            "(letters, digits, '_' or '-', not starting with a digit or '-'; no '/', '..' or spaces)"
        )
    with pytest.raises(ValueError, match=re.escape("invalid domain name 'law\\n'")):
        ExpertSpec(name="law", domain="law\n")


def test_the_choice_objective_needs_multiple_choice_data():
    from ccoe.config import BackboneSpec, DataSpec, ExpertJobSpec, TrainingSpec

    common = dict(backbone=BackboneSpec(source="smollm2-135m-instruct"), expert=ExpertSpec(name="law", domain="law"),
                  training=TrainingSpec(objective="choice"))
    with pytest.raises(ValueError, match="objective 'choice' needs multiple-choice data; set data.choices_field"):
        ExpertJobSpec(data=DataSpec(records=[{"prompt": "p", "response": "r"}]), **common)
    job = ExpertJobSpec(data=DataSpec(records=[{"prompt": "p", "choices": ["a", "b"], "answer": 0}], choices_field="choices"), **common)
    assert job.training.choice_scale == 2.0 and job.training.choice_lm_weight == 1.0
