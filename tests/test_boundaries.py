"""Module boundaries that keep ccoe a library: MLflow lives in one module and sets no process-wide state."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("ccoe", "lightning_modules", "flows") for p in (ROOT / folder).rglob("*.py"))


def test_one_module_imports_mlflow():
    importers = [p.relative_to(ROOT).as_posix() for p in SOURCES if re.search(r"^\s*(import mlflow|from mlflow)", p.read_text(), re.M)]
    assert importers == ["ccoe/registry.py"]


def test_nothing_sets_mlflow_process_wide_state():
    """`mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI, so a later job or child process would log
    into this one's store; every call goes through a client made for its spec instead."""
    setters = [p.relative_to(ROOT).as_posix() for p in SOURCES if re.search(r"mlflow\.(set_\w+|start_run|autolog)\(", p.read_text())]
    assert setters == []
