"""The sweep grid becomes one job per point, and trials are ranked on the validation split with intervals:
by choice accuracy on multiple-choice rows, else by NLL."""

import pytest

from ccoe.backbone import load_backbone
from ccoe.config import BackboneSpec, DataSpec, LayerSelection, TrainingOverrides, load_pipeline
from ccoe.data import validation_items
from ccoe.domains import DOMAINS
from ccoe.evaluate import evaluate_domain, evaluate_loss
from ccoe.expert import create_expert
from ccoe.model import CCoEModel
from ccoe.pipeline import data_for
from ccoe.sweep import SweepSpec, rank_trials, sweep_trials, validation_scores
from tests.conftest import perturb


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


def test_choice_lm_weights_are_grid_points_of_a_choice_expert_only(tiny):
    plan = tiny.experts[0]
    choice = plan.model_copy(update={"training": TrainingOverrides(objective="choice", choice_lm_weight=0.7)})
    sweep = SweepSpec(learning_rates=[1e-4], layers=[LayerSelection(strategy="top", k=1)], choice_lm_weights=[0.2, 1.0])
    trials = sweep_trials(tiny, choice, data_for(tiny, plan), sweep)
    assert [(t.choice_lm_weight, t.job.training.choice_lm_weight, t.job.training.objective) for t in trials] == [(0.2, 0.2, "choice"), (1.0, 1.0, "choice")]
    assert trials[0].describe() == f"lr 0.0001, top k=1, {tiny.training.max_steps} steps, lm weight 0.2"
    own = sweep_trials(tiny, choice, data_for(tiny, plan), sweep.model_copy(update={"choice_lm_weights": []}))
    assert [(t.choice_lm_weight, t.job.training.choice_lm_weight) for t in own] == [(None, 0.7)] and "lm weight" not in own[0].describe()
    with pytest.raises(ValueError, match="'lm' objective: choice_lm_weights apply to the choice objective only"):
        sweep_trials(tiny, plan, data_for(tiny, plan), sweep)


def test_on_choice_rows_trials_are_ranked_by_accuracy_even_against_a_lower_nll(tiny):
    """The medical sweep's lesson: the trial with the lowest validation loss was not the most accurate."""
    plan = tiny.experts[0].model_copy(update={"training": TrainingOverrides(objective="choice")})
    sweep = SweepSpec(learning_rates=[1e-4], layers=[LayerSelection(strategy="top", k=1)], choice_lm_weights=[1.0, 0.2])
    trials = sweep_trials(tiny, plan, data_for(tiny, tiny.experts[0]), sweep)
    tokens = [4.0] * 40
    nll = {"math-t0": ([4.0] * 40, tokens), "math-t1": ([8.0] * 40, tokens)}  # t0: 1 nat/token, t1: 2
    correct = {"math-t0": [1.0] * 10 + [0.0] * 30, "math-t1": [1.0] * 30 + [0.0] * 10}
    result = rank_trials(trials, nll, {}, item_correct=correct)
    assert [s.trial.name for s in result.ranked] == ["math-t1", "math-t0"] and result.by_accuracy
    assert [s.val_accuracy for s in result.ranked] == [0.75, 0.25] and result.ranked[0].versus_best.estimate == 0
    assert result.ranked[1].versus_best.estimate == -0.5 and result.ranked[1].versus_best.high < 0  # 20 items right only under t1
    assert result.overrides().choice_lm_weight == 0.2 and result.table()[0]["val_accuracy"] == 0.75
    assert "validation choice accuracy on 40" in result.markdown() and "| math-t1 | lr 0.0001, top k=1, 3 steps, lm weight 0.2 | 2.0000 | 0.750 |" in result.markdown()
    tied = rank_trials(trials, nll, {}, item_correct={"math-t0": correct["math-t0"], "math-t1": correct["math-t0"]})
    assert tied.best.name == "math-t0"  # equal accuracy: the lower NLL wins
    assert rank_trials(trials, nll, {}).best.name == "math-t0" and not rank_trials(trials, nll, {}).by_accuracy


def test_validation_scores_count_what_the_choice_scorer_counts(local_backbone_dir):
    """On choice rows, each route's 0/1 per item equal `evaluate_domain`'s choice scores and its NLL the
    right option's; on plain rows, NLL only (equal to `evaluate_loss`), no accuracy."""
    backbone = load_backbone(BackboneSpec(source=str(local_backbone_dir)))
    model = CCoEModel(backbone)
    model.push_expert(perturb(create_expert(backbone, "a", "law", [2, 3]), scale=0.5))
    model.push_expert(perturb(create_expert(backbone, "b", "law", [1, 3]), scale=0.5, seed=2))
    words = "two three four five six seven eight nine ten".split()
    items = [{"prompt": f"what is {words[i % 9]} plus {words[(i * 4) % 9]}", "choices": [words[(i + j) % 9] for j in range(3)], "answer": i % 3}
             for i in range(12)]
    items = [{**it, "response": it["choices"][it["answer"]]} for it in items]
    data = DataSpec(records=[], use_chat_template=False)
    nll, correct = validation_scores(model, backbone.tokenizer, items, ["a", "b"], data, batch_size=4)
    scores = evaluate_domain(model, backbone.tokenizer, DOMAINS["law"], items, ["a", "b"], spec=data, batch_size=4)
    for route in ("a", "b"):
        assert correct[route] == list(scores[route].item_scores) and nll[route] == (list(scores[route].item_nll), list(scores[route].item_tokens))
    plain = [{"prompt": it["prompt"], "response": it["response"]} for it in items]
    nll, correct = validation_scores(model, backbone.tokenizer, plain, ["a"], data, batch_size=4)
    loss = evaluate_loss(model, backbone.tokenizer, "x", plain, ["a"], spec=data, batch_size=4)["a"]
    assert correct is None and nll["a"] == (list(loss.item_nll), list(loss.item_tokens))


def test_on_code_rows_trials_are_ranked_by_the_share_of_held_out_problems_they_pass(tiny, local_backbone_dir):
    """A code row's `>>>` examples run as tests (`CodeDomain.validation_item`): each route's 0/1 per
    scorable row equal `evaluate_domain`'s, rows without examples keep only their NLL, and the ranking's n
    and label are those of the scored rows."""
    from ccoe.domains.code import frame

    backbone = load_backbone(BackboneSpec(source=str(local_backbone_dir)))
    model = CCoEModel(backbone)
    model.push_expert(perturb(create_expert(backbone, "a", "code", [2, 3]), scale=0.5))
    shown = [{"prompt": frame(f"def add_{i}(x):\n    \"\"\"Add {i}.\n    >>> add_{i}(1)\n    {i + 1}\n    \"\"\"\n"),
              "response": f"```python\ndef add_{i}(x):\n    return x + {i}\n```"} for i in range(3)]
    items = shown + [{"prompt": frame("def noop(x):\n    \"\"\"Nothing.\"\"\"\n"), "response": "```python\npass\n```"}]
    data = DataSpec(records=[], use_chat_template=False)
    nll, correct = validation_scores(model, backbone.tokenizer, items, ["a"], data, batch_size=4, domain=DOMAINS["code"], max_new_tokens=4)
    scorable = [DOMAINS["code"].validation_item(it) for it in shown]
    scores = evaluate_domain(model, backbone.tokenizer, DOMAINS["code"], scorable, ["a"], spec=data, batch_size=4, max_new_tokens=4)
    assert correct == {"a": list(scores["a"].item_scores)} and len(correct["a"]) == 3 and len(nll["a"][0]) == 4
    assert validation_scores(model, backbone.tokenizer, items, ["a"], data, batch_size=4, domain=DOMAINS["math"])[1] is None
    plan = tiny.experts[0]
    trials = sweep_trials(tiny, plan, data_for(tiny, plan), SweepSpec(learning_rates=[1e-4, 3e-4], layers=[LayerSelection(strategy="top", k=1)]))
    tokens = [4.0] * 40
    result = rank_trials(trials, {"math-t0": ([4.0] * 40, tokens), "math-t1": ([8.0] * 40, tokens)}, {},
                         item_correct={"math-t0": [0.0] * 10, "math-t1": [1.0] * 2 + [0.0] * 8}, accuracy="code task score")
    assert result.best.name == "math-t1" and result.n == 10 and "validation code task score on 10 held-out" in result.markdown()
