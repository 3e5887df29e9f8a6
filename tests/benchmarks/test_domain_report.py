"""The domain report's per-domain budgets: the shared training spec with each domain's overrides."""

from pathlib import Path

import pytest
import yaml

from benchmarks.domain_report import ReportSpec

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "domain-experts.yaml"


def test_a_domain_budget_overrides_only_what_it_names():
    spec = ReportSpec.model_validate(yaml.safe_load(CONFIG.read_text()))
    law, law_length = spec.budget("law")
    math, math_length = spec.budget("math")
    assert (law.objective, law_length) == ("choice", 576) and (math.objective, math_length) == ("lm", spec.max_length)
    assert math.max_steps == spec.training.max_steps == 80 and law.max_steps == 240 and law.val_check_interval == 80
    assert law.learning_rate == math.learning_rate == spec.training.learning_rate and math.val_check_interval is None
    assert spec.budget("code")[0].max_steps == 240


def test_an_unknown_override_is_refused():
    raw = yaml.safe_load(CONFIG.read_text())
    raw["domains"] = {"law": {"training": {"objectiv": "choice"}}}
    with pytest.raises(ValueError, match="objectiv"):
        ReportSpec.model_validate(raw)
