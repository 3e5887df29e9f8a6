"""The domain report's per-domain budgets: the shared training spec with each domain's overrides."""

from pathlib import Path

import pytest
import yaml

from benchmarks.domain_report import (
    DomainBudget, ReportSpec, budget_row, failure_tally, looks_adjusted, report, validation_comparison, validation_lines, validation_run,
    validation_section,
)
from ccoe.backbone import load_backbone
from ccoe.config import BackboneSpec, DataSpec, EvalSpec
from ccoe.data import validation_items
from ccoe.domains import DOMAINS, eval_items
from ccoe.domains.code import frame
from ccoe.evaluate import DomainScore, evaluate_domain
from ccoe.evidence import paired_difference
from ccoe.expert import create_expert
from ccoe.model import CCoEModel
from tests.conftest import perturb

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "domain-experts.yaml"


def test_a_domain_budget_overrides_only_what_it_names():
    spec = ReportSpec.model_validate(yaml.safe_load(CONFIG.read_text()))
    law, law_length = spec.budget("law")
    math, math_length = spec.budget("math")
    assert (law.objective, law_length) == ("choice", 576) and (math.objective, math_length) == ("lm", spec.max_length)
    assert math.max_steps == spec.training.max_steps == 80 and law.max_steps == 240 and law.val_check_interval == 80
    assert law.learning_rate == math.learning_rate == spec.training.learning_rate and math.val_check_interval is None
    assert spec.budget("code")[0].max_steps == 240 and spec.budget("code")[0].learning_rate == 3e-4
    assert (spec.own("law").test_looks, spec.own("medical").test_looks, spec.own("code").test_looks, spec.own("math").test_looks) == (6, 7, 8, 1)
    assert spec.own("math") == DomainBudget() and spec.own("math").val_fraction == 0.05 and spec.own("code").val_fraction == 0.2
    experts = {e.domain: e for e in spec.model.experts}
    assert budget_row(experts["math"], math, math_length) == {"layers": "global k=8", "steps": 80, "batch_size": 4, "learning_rate": 1e-4,
                                                              "max_length": 384, "objective": "lm"}
    assert budget_row(experts["law"], law, law_length) == {"layers": "global k=8", "steps": 240, "batch_size": 4, "learning_rate": 1e-4,
                                                           "max_length": 576, "objective": "choice", "choice_scale": 2.0, "choice_lm_weight": 1.0}


def test_an_unknown_override_is_refused():
    raw = yaml.safe_load(CONFIG.read_text())
    raw["domains"] = {"law": {"training": {"objectiv": "choice"}}}
    with pytest.raises(ValueError, match="objectiv"):
        ReportSpec.model_validate(raw)


def test_the_validation_comparison_pairs_base_and_expert_on_the_trainers_held_out_choice_rows(local_backbone_dir):
    """The rows are the trainer's validation split (options and answer kept), scored like the test set:
    the metrics equal `evaluate_domain` on those rows, the interval is the paired one, and a generate
    domain gets none (its training rows carry no scorer's fields)."""
    backbone = load_backbone(BackboneSpec(source=str(local_backbone_dir)))
    model = CCoEModel(backbone)
    model.push_expert(perturb(create_expert(backbone, "law", "law", [2, 3]), scale=0.5))
    words = "two three four five six seven eight nine ten".split()
    records = [{"prompt": f"what is {words[i % 9]} plus {words[(i * 4) % 9]}", "choices": [words[(i + j) % 9] for j in range(3)], "answer": i % 3,
                "response": "unused"} for i in range(60)]
    data = DataSpec(records=records, choices_field="choices", answer_field="answer", val_fraction=0.25, use_chat_template=False)
    spec = DataSpec(records=[], use_chat_template=False)
    rows = validation_items(data)
    assert 6 <= len(rows) <= 30 and all(row["response"] == row["choices"][row["answer"]] for row in rows)
    assert {(row["prompt"], tuple(row["choices"])) for row in rows} <= {(r["prompt"], tuple(r["choices"])) for r in records}
    row = validation_comparison(model, backbone.tokenizer, DOMAINS["law"], data, "law", spec, EvalSpec(batch_size=4))
    scores = evaluate_domain(model, backbone.tokenizer, DOMAINS["law"], rows, [None, "law"], spec=spec)
    diff = paired_difference(scores["law"].item_scores, scores[None].item_scores, binary=True)
    assert row == {"n": len(rows), "base": round(scores[None].metric, 4), "expert": round(scores["law"].metric, 4),
                   "diff": round(diff.estimate, 4), "diff_low": round(diff.low, 4), "diff_high": round(diff.high, 4)}
    assert row["diff_low"] <= row["diff"] <= row["diff_high"] and row["diff"] == round(row["expert"] - row["base"], 4)
    assert validation_comparison(model, backbone.tokenizer, DOMAINS["math"], data, "law", spec, EvalSpec()) is None


def test_the_code_validation_comparison_runs_the_held_out_rows_examples_as_tests(local_backbone_dir):
    """A code row is scored on its docstring's `>>>` examples (`CodeDomain.validation_item`); rows without
    examples are left out of n. Base and expert generate within the test set's token budget, so the tiny
    random model writes nothing that runs: both score 0 on exactly the rows that carry examples."""
    backbone = load_backbone(BackboneSpec(source=str(local_backbone_dir)))
    model = CCoEModel(backbone)
    model.push_expert(perturb(create_expert(backbone, "code", "code", [2, 3]), scale=0.5))
    shown = [{"prompt": frame(f"def add_{i}(x):\n    \"\"\"Add {i}.\n    >>> add_{i}(1)\n    {i + 1}\n    \"\"\"\n"),
              "response": f"```python\ndef add_{i}(x):\n    return x + {i}\n```"} for i in range(40)]
    bare = [{"prompt": frame(f"def noop_{i}(x):\n    \"\"\"Nothing.\"\"\"\n"), "response": "```python\npass\n```"} for i in range(40)]
    data = DataSpec(records=shown + bare, val_fraction=0.25, use_chat_template=False)
    held = validation_items(data)
    with_examples = [r for r in held if ">>>" in r["prompt"]]
    assert with_examples and len(with_examples) < len(held)
    row = validation_comparison(model, backbone.tokenizer, DOMAINS["code"], data, "code", DataSpec(records=[], use_chat_template=False),
                                EvalSpec(max_new_tokens={"code": 4}, generation_batch_size=8))
    assert row == {"n": len(with_examples), "base": 0.0, "expert": 0.0, "diff": 0.0, "diff_low": 0.0, "diff_high": 0.0}


def test_the_report_prints_each_validation_comparison_with_its_interval():
    row = {"domain": "medical", "n": 99, "base": 0.313, "expert": 0.313, "diff": 0.0, "diff_low": -0.14, "diff_high": 0.141, "detectable": 0.19,
           "base_loss": 0.5, "expert_loss": 0.3, "loss_decrease_low": 0.1, "loss_decrease_high": 0.2, "train_s": 1, "eval_s": 1, "cpu": "x",
           "budget": {"layers": "global k=8", "steps": 240, "batch_size": 4, "learning_rate": 1e-4, "objective": "choice"}, "isolated": True,
           "val": {"n": 232, "base": 0.224, "expert": 0.353, "diff": 0.129, "diff_low": 0.05, "diff_high": 0.2}}
    text = report([row])
    assert "| global k=8, 240 x 4, lr 0.0001, choice objective | 1 |" in text
    budget = {**row["budget"], "choice_scale": 2.0, "choice_lm_weight": 0.2}
    assert "| global k=8, 240 x 4, lr 0.0001, choice objective, scale 2, lm weight 0.2 | 1 |" in report([{**row, "budget": budget}])
    assert "- medical on its validation split (n=232, held out of training but used to choose the budget, so not untuned): " \
           "base 0.224 -> expert 0.353, +0.129 [+0.050, +0.200]." in text
    assert "validation split" not in report([{**row, "val": None}])


def test_a_validation_only_trial_refuses_generate_domains_before_training_and_prints_its_budget(tmp_path):
    """--validation-only never scores test items; a generate domain with no validation metric (math, sql)
    is refused before anything loads or trains, and each trial prints its budget beside the paired interval."""
    spec = ReportSpec.model_validate(yaml.safe_load(CONFIG.read_text()))
    with pytest.raises(ValueError, match="no validation metric for math, sql .*leave them out of --domains"):
        validation_run(spec, tmp_path, ["medical", "sql", "math", "code"])
    assert not any(tmp_path.iterdir())
    row = {"domain": "medical", "budget": {"layers": "global k=16", "steps": 240, "batch_size": 4, "learning_rate": 3e-4, "max_length": 384,
                                           "objective": "choice"},
           "val": {"n": 232, "base": 0.224, "expert": 0.341, "diff": 0.116, "diff_low": 0.031, "diff_high": 0.198}, "train_s": 768, "val_s": 40, "cpu": "x"}
    choice = {**row, "domain": "law", "budget": {**row["budget"], "choice_scale": 5.0, "choice_lm_weight": 0.2}}
    assert validation_lines([row, choice]).splitlines() == [
        f"- {d} (global k=16, 240 x 4, lr 0.0003, choice{extra}): validation n=232, base 0.224 -> expert 0.341, +0.116 [+0.031, +0.198]; train 768 s (x)"
        for d, extra in (("medical", ""), ("law", ", scale 5, lm weight 0.2"))]
    section = validation_section([row, choice])
    assert section.startswith("## Budget trials on the validation split (no test look)\n") and section.endswith(validation_lines([row, choice]) + "\n")


def test_code_failures_are_tallied_per_route_and_printed_side_by_side():
    items = eval_items("code")[:3]
    wrong = [f"```python\n{item['code_prompt']}    return None\n```" for item in items]
    base = DomainScore("code", None, 0.4, 0.0, 3, item_outputs=(wrong[0], "no code here", wrong[2]))
    expert = DomainScore("code", "code", 0.3, 1 / 3, 3, item_outputs=(items[0]["response"], wrong[1], wrong[2]))
    tally = failure_tally(DOMAINS["code"], items, base, expert)
    assert tally == {"base": {"AssertionError": 2, "SyntaxError": 1}, "expert": {"AssertionError": 2, "passed": 1}}
    assert failure_tally(DOMAINS["math"], items, base, expert) is None
    row = {"domain": "code", "n": 3, "base": 0.0, "expert": 0.333, "diff": 0.333, "diff_low": -0.1, "diff_high": 0.8, "detectable": 0.9,
           "base_loss": 0.4, "expert_loss": 0.3, "loss_decrease_low": 0.0, "loss_decrease_high": 0.2, "train_s": 1, "eval_s": 1, "cpu": "x",
           "budget": {"layers": "global k=8", "steps": 240, "batch_size": 4, "learning_rate": 1e-4}, "isolated": True, "failures": tally}
    assert "- code, what ended each program (base -> expert): AssertionError 2 -> 2; SyntaxError 1 -> 0; passed 0 -> 1." in report([row])


def test_more_looks_at_one_test_set_widen_the_interval_that_must_exclude_zero():
    """20 items right only under the expert, 6 only under the base, 74 equal (n=100): one look's 95%
    interval excludes 0 (exact two-sided p of 20 vs 6 is ~0.009); over 6 looks the 99.17% interval reaches
    below it, and the row and report say so with the discordant counts."""
    expert = [1.0] * 20 + [0.0] * 6 + [1.0] * 30 + [0.0] * 44
    base = [0.0] * 20 + [1.0] * 6 + [1.0] * 30 + [0.0] * 44
    one, six = looks_adjusted(expert, base, 1), looks_adjusted(expert, base, 6)
    assert (one["expert_only"], one["base_only"], six["test_looks"]) == (20, 6, 6)
    assert one["adjusted_low"] > 0 and six["adjusted_low"] < 0 < six["adjusted_high"] < one["adjusted_high"] + 0.1
    assert six["adjusted_low"] < one["adjusted_low"] and six["adjusted_high"] > one["adjusted_high"]
    row = {"domain": "law", "n": 100, "base": 0.36, "expert": 0.5, "diff": 0.14, "diff_low": one["adjusted_low"], "diff_high": one["adjusted_high"],
           "detectable": 0.12, "base_loss": 0.5, "expert_loss": 0.3, "loss_decrease_low": 0.1, "loss_decrease_high": 0.2, "train_s": 1, "eval_s": 1,
           "cpu": "x", "budget": {"layers": "global k=8", "steps": 240, "batch_size": 4, "learning_rate": 1e-4}, "isolated": True, **six}
    assert (f"- law: 20 items right only under the expert, 6 only under the base; 6 configurations of this expert scored on this "
            f"test set so far, so over those looks (Bonferroni, 99.17%): [{six['adjusted_low']:+.3f}, {six['adjusted_high']:+.3f}].") in report([row])
    assert "Bonferroni" not in report([{**row, **one}])
