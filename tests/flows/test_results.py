"""The persisted result of a `train-expert` run is JSON: production reads it back from shared storage,
so a pickled result would execute whatever a writer of that storage put there."""

import json

from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from ccoe.config import PipelineSpec, load_yaml
from ccoe.manifest import TrainedExpert
from ccoe.pipeline import data_for
from flows.train import train_expert_flow
from tests.flows.conftest import tiny_config


def test_the_train_expert_result_is_stored_as_json_not_pickle(tmp_path, prefect_harness):
    spec = load_yaml(PipelineSpec, tiny_config(tmp_path))
    plan = spec.experts[0]
    storage = tmp_path / "results"
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}):
        state = train_expert_flow(spec.job(plan, data_for(spec, plan)), return_state=True)
    assert state.is_completed()
    files = list(storage.iterdir())
    assert len(files) == 1
    text = files[0].read_text()
    assert not text.startswith(("gAS", "gAW"))  # base64 of a pickle (protocol 4/5): Prefect's default serializer
    stored = json.loads(text)
    assert stored["name"] == plan.expert.name and len(stored["entry"]["sha256"]) == 64
    assert TrainedExpert.model_validate(stored).stored_in == spec.storage  # what train_job_remote reads back
