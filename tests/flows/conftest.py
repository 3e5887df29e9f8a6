"""Flow tests run against Prefect's test harness (a temporary local API with SQLite)."""

from pathlib import Path

import pytest
import yaml

from ccoe.config import PipelineSpec, load_yaml

TINY = Path(__file__).resolve().parent.parent.parent / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_config(folder: Path, **changes) -> Path:
    """configs/tiny.yaml with every output path inside `folder` (and `changes` applied), as a file."""
    data = load_yaml(PipelineSpec, TINY).with_outputs_in(folder).model_dump(mode="json")
    data.update(changes)
    PipelineSpec.model_validate(data)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
