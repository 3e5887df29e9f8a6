"""The sweep grid becomes one job per point, and trials are ranked on validation NLL with intervals."""

import pytest

from ccoe.config import DataSpec, LayerSelection, load_pipeline
from ccoe.data import validation_items
from ccoe.pipeline import data_for
from ccoe.sweep import SweepSpec, rank_trials, sweep_trials


@pytest.fixture
def tiny():
    return load_pipeline("configs/tiny.yaml", {})


def test_every_grid_point_is_one_named_job_with_its_overrides(tiny):
    plan = tiny.experts[0]
    sweep = SweepSpec(learning_rates=[1e-4, 3e-4], layers=[LayerSelection(strategy="top", k=1), LayerSelection(strategy="global", k=2)], max_steps=[5])
    trials = sweep_trials(tiny, plan, data_for(tiny, plan), sweep)
    assert [t.name for t in trials] == ["math-t0", "math-t1", "math-t2", "math-t3"]
    assert [(t.job.training.learning_rate, t.job.expert.layers.strategy, t.job.training.max_steps) for t in trials] == [
        (1e-4, "top", 5), (1e-4, "global", 5), (3e-4, "top", 5), (3e-4, "global", 5)]
    assert all(t.job.expert.domain == "math" and t.job.training.batch_size == tiny.training.batch_size for t in trials)
    assert len({t.job.output_dir for t in trials}) == 1 and len({t.job.expert.name for t in trials}) == 4  # one blob per trial name
    default_steps = sweep_trials(tiny, plan, data_for(tiny, plan), sweep.model_copy(update={"max_steps": []}))
    assert {t.max_steps for t in default_steps} == {tiny.training.max_steps}


def test_a_sweep_needs_a_validation_split(tiny):
    plan = tiny.experts[0]
    data = DataSpec(records=[{"prompt": "p", "response": "r"}] * 4, val_fraction=0.0)
    with pytest.raises(ValueError, match="val_fraction > 0"):
        sweep_trials(tiny, plan, data, SweepSpec(learning_rates=[1e-3], layers=[LayerSelection(strategy="top", k=1)]))
    assert validation_items(data) == []
    records = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(40)]
    held = validation_items(DataSpec(records=records, val_fraction=0.25))
    assert 4 <= len(held) <= 18 and validation_items(DataSpec(records=records, val_fraction=0.25), limit=3) == held[:3]


def test_trials_are_ranked_by_validation_nll_with_intervals_and_diverged_ones_are_failures(tiny):
    plan = tiny.experts[0]
    sweep = SweepSpec(learning_rates=[1e-4, 1e-3, 50.0], layers=[LayerSelection(strategy="top", k=1)])
    trials = sweep_trials(tiny, plan, data_for(tiny, plan), sweep)
    tokens = [10.0] * 12
    nll = {"math-t0": ([30.0 + i % 3 for i in range(12)], tokens), "math-t1": ([20.0 + i % 3 for i in range(12)], tokens),
           "math-t2": ([float("nan")] * 12, tokens)}
    result = rank_trials(trials, nll, {})
    assert [s.trial.name for s in result.ranked] == ["math-t1", "math-t0"] and result.best.learning_rate == 1e-3
    assert result.ranked[0].versus_best.estimate == 0 and result.ranked[1].versus_best.low > 0.9  # t0 is worse by 1 nat/token
    assert result.failures == {"math-t2": "diverged: non-finite validation NLL"}
    assert result.overrides().learning_rate == 1e-3 and result.table()[0]["val_loss"] == pytest.approx(2.1, abs=1e-3)
    assert "| math-t1 | lr 0.001, top k=1, 3 steps | 2.1000 |" in result.markdown() and "math-t2 failed: diverged" in result.markdown()
    with pytest.raises(RuntimeError, match="every trial failed"):
        rank_trials(trials, {"math-t2": nll["math-t2"]}, {"math-t0": "oom"})
