"""Law and medical: training-only questions from other packages, kept off the domain's own set."""

import pytest

from ccoe.domains.base import choice_item, read_jsonl, split_by_hash
from ccoe.domains.mcq import LAW, MEDICAL, decontaminated, parse_medmcqa_validation, parse_mmlu
from ccoe.domains.sources import EVALS, fetch


def _question(item: dict) -> str:
    return item["prompt"].split("\n\nA. ")[0]


@pytest.mark.parametrize("domain, least", [(LAW, 1400), (MEDICAL, 4000)])
def test_extra_questions_train_but_the_held_out_side_is_the_domains_own(domain, least):
    own = [domain.parse(r) for r in read_jsonl(fetch(EVALS)[domain.file])]
    own_train, own_held = split_by_hash(own, domain.eval_fraction)
    train, held = domain.build()
    assert held == own_held  # the scored set is exactly as before the extra sets came
    assert train[: len(own_train)] == own_train and len(train) - len(own_train) >= least
    extra = train[len(own_train):]
    own_questions = {" ".join(_question(item).lower().split()) for item in own}
    assert not {" ".join(_question(item).lower().split()) for item in extra} & own_questions
    assert all(item["response"] == item["choices"][item["answer"]] for item in extra)


def test_decontamination_drops_copies_reworded_tails_and_repeats():
    own = [choice_item("A driver ran a red light at night and struck a pedestrian who was crossing the street lawfully. Is the driver liable?",
                       ["Yes", "No"], 0),
           choice_item("Which nerve supplies the deltoid?", ["Axillary", "Radial"], 0)]
    run = choice_item("Years later, a driver ran a red light at night and struck a pedestrian who was crossing the street lawfully, and fled.",
                      ["Yes", "No"], 1)
    short = choice_item("Which nerve supplies the deltoid muscle in adults?", ["Axillary", "Ulnar"], 0)
    fresh = choice_item("A landlord failed to repair a stair after notice, and a tenant fell. Is the landlord liable?", ["Yes", "No"], 0)
    near = choice_item("Which nerve supplies the biceps?", ["Musculocutaneous", "Radial"], 0)
    assert decontaminated([run, short, fresh, near, fresh], own) == [fresh, near]


def test_parsers_read_the_package_layouts_and_refuse_others():
    item = parse_medmcqa_validation({"question": "Which nerve supplies the deltoid?", "options": "A. Axillary\nB. Radial\nC. Ulnar\nD. Median",
                                     "answer": "A. Axillary"}, "Anatomy")
    assert item["prompt"].startswith("Subject: Anatomy\n\nWhich nerve supplies the deltoid?\n\nA. Axillary\n") and item["answer"] == 0
    assert not parse_medmcqa_validation({"question": "Q?", "options": "A. x\nB. y", "answer": "B. y"}, "Unknown")["prompt"].startswith("Subject")
    with pytest.raises(ValueError, match="MedMCQA validation record layout"):
        parse_medmcqa_validation({"question": "Q?", "options": "1) x\n2) y", "answer": "1) x"}, "Anatomy")
    mmlu = parse_mmlu({"question": "Q?", "answer_a": "w", "answer_b": "x", "answer_c": "y", "answer_d": "z", "correct_answer": "C", "topic": "t"})
    assert mmlu["choices"] == ["A. w", "B. x", "C. y", "D. z"] and mmlu["answer"] == 2
