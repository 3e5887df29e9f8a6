"""ccoe.evaluate on a tiny backbone with a real tokenizer: shared-prefix scoring equals one route at a time."""

import zlib

import torch

from ccoe.backbone import load_backbone
from ccoe.config import BackboneSpec, DataSpec
from ccoe.data import Example, encode_example
from ccoe.domains.base import choice_item, score_choice
from ccoe.domains.math import MathDomain
from ccoe.evaluate import choice_logprobs, choice_means, evaluate_domain, evaluate_loss, generation_batches, sequence_logprobs
from ccoe.expert import create_expert
from ccoe.model import CCoEModel
from tests.conftest import perturb

SPEC = DataSpec(records=[], use_chat_template=False)


class _Choice:
    name, task = "toy", "choice"

    def score(self, item, output):
        return score_choice(item, output)


def _model(local_backbone_dir):
    backbone = load_backbone(BackboneSpec(source=str(local_backbone_dir)))
    model = CCoEModel(backbone)
    model.push_expert(perturb(create_expert(backbone, "e", "math", [2, 3]), scale=0.3))
    model.push_expert(perturb(create_expert(backbone, "g", "law", [1]), scale=0.3, seed=4))
    return model, backbone.tokenizer


def test_sequence_logprobs_match_a_plain_forward(local_backbone_dir):
    model, tok = _model(local_backbone_dir)
    pairs = [("what is two plus three", "five"), ("the sum of four and five", "nine answer")]
    scored = sequence_logprobs(model, tok, pairs, [None, "e", "g"], SPEC, batch_size=1)
    for route, (sums, counts) in scored.items():
        for k, (p, r) in enumerate(pairs):
            enc = encode_example(Example(p, r), tok, SPEC)
            ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor([enc["labels"]])
            logprobs = model(ids, expert=route).logits[0, :-1].log_softmax(-1)
            keep = labels[0, 1:] != -100
            expected = logprobs[keep].gather(1, labels[0, 1:][keep].unsqueeze(1)).sum()
            torch.testing.assert_close(sums[k], expected, atol=1e-4, rtol=1e-5)
            assert counts[k] == keep.sum()


def test_evaluate_domain_scores_every_route(local_backbone_dir):
    model, tok = _model(local_backbone_dir)
    items = [choice_item("what is two plus three", ["four", "five", "six"], 1),
             choice_item("the sum of four and five", ["nine", "eight"], 0)]
    scores = evaluate_domain(model, tok, _Choice(), items, [None, "e"], spec=SPEC)
    assert set(scores) == {None, "e"} and all(0.0 <= s.metric <= 1.0 and s.loss > 0 for s in scores.values())
    alone = evaluate_domain(model, tok, _Choice(), items, ["e"], spec=SPEC)["e"]
    assert abs(alone.loss - scores["e"].loss) < 1e-5 and alone.metric == scores["e"].metric

    math_items = [{"prompt": "what is two plus three", "response": "The answer is 5.", "answer": "5"}]
    generated = evaluate_domain(model, tok, MathDomain(), math_items, [None, "e", "g"], spec=SPEC, max_new_tokens=3)
    assert {s.route for s in generated.values()} == {None, "e", "g"} and all(s.metric in (0.0, 1.0) for s in generated.values())


def test_packed_choice_scores_equal_each_option_scored_alone(local_backbone_dir):
    """The multiple-choice scorer packs an item's options into one row; each option's mean token
    log-likelihood must equal that of its own (prompt, option) sequence, and the metric picks the argmax."""
    model, tok = _model(local_backbone_dir)
    items = [choice_item("what is two plus three", ["four", "five six", "six"], 1),
             choice_item("the sum of four and five", ["nine", "eight answer"], 0),
             choice_item("what is the sum of two and three four five six seven", ["ten", "nine", "eight", "seven"], 3)]
    tables = {route: choice_means(*table) for route, table in choice_logprobs(model, tok, items, [None, "e", "g"], SPEC, batch_size=2).items()}
    for route, table in tables.items():
        for k, item in enumerate(items):
            sums, counts = sequence_logprobs(model, tok, [(item["prompt"], c) for c in item["choices"]], [route], SPEC)[route]
            torch.testing.assert_close(table[k, : len(item["choices"])], sums / counts, atol=1e-4, rtol=1e-5)
            assert torch.isinf(table[k, len(item["choices"]):]).all()
        scores = evaluate_domain(model, tok, _Choice(), items, [route], spec=SPEC)[route]
        assert scores.item_scores == tuple(float(int(row.argmax()) == it["answer"]) for row, it in zip(table, items))


def test_generation_batches_cover_every_row_once_in_even_length_ordered_batches():
    prompts = ["a" * n for n in (5, 1, 9, 3, 7)]
    batches = generation_batches(prompts, [None, "e"], 4)
    assert [len(b) for b in batches] == [4, 4, 2]  # 10 rows -> ceil(10/4) = 3 batches of <= ceil(10/3)
    flat = [row for batch in batches for row in batch]
    assert sorted(flat) == sorted((i, r) for i in range(5) for r in range(2))
    assert flat == [(1, 0), (1, 1), (3, 0), (3, 1), (0, 0), (0, 1), (4, 0), (4, 1), (2, 0), (2, 1)]
    assert [len(b) for b in generation_batches(prompts, [None, "e"], 32)] == [10]
    assert generation_batches([], [None], 8) == []


class _Echo:
    """A generation 'domain' whose score is a checksum of the generated text, so equal scores mean equal texts."""

    name, task = "echo", "generate"

    def complete(self, text):
        return False

    def score(self, item, output):
        return float(zlib.crc32(output.encode()))


def test_generated_texts_do_not_depend_on_the_generation_batch(local_backbone_dir):
    model, tok = _model(local_backbone_dir)
    items = [{"prompt": f"what is {a} plus {b}" + " please" * a, "response": f"The answer is {a + b}."}
             for a, b in [(2, 3), (4, 4), (1, 7), (6, 2), (3, 3)]]
    one = evaluate_domain(model, tok, _Echo(), items, [None, "e", "g"], spec=SPEC, max_new_tokens=5, generation_batch_size=1)
    many = evaluate_domain(model, tok, _Echo(), items, [None, "e", "g"], spec=SPEC, max_new_tokens=5, generation_batch_size=32)
    assert len({s for r in one.values() for s in r.item_scores}) > 5  # texts differ across items and routes
    assert {r: s.item_scores for r, s in one.items()} == {r: s.item_scores for r, s in many.items()}
    assert {r: s.item_outputs for r, s in one.items()} == {r: s.item_outputs for r, s in many.items()}
    assert all(len(s.item_outputs) == len(items) and s.item_scores == tuple(float(zlib.crc32(t.encode())) for t in s.item_outputs)
               for s in one.values())


def test_a_choice_domain_reads_its_gold_loss_off_the_choice_pass(local_backbone_dir):
    """The gold option is the gold response: the per-item NLL and token counts of a choice domain equal
    those of a separate loss pass over (prompt, response)."""
    model, tok = _model(local_backbone_dir)
    items = [choice_item("what is two plus three", ["four", "five six", "six"], 1),
             choice_item("the sum of four and five", ["nine", "eight answer"], 0),
             choice_item("what is the sum of two and three four five six seven", ["ten", "nine", "eight", "seven"], 3)]
    scored = evaluate_domain(model, tok, _Choice(), items, [None, "e"], spec=SPEC, batch_size=2)
    separate = evaluate_loss(model, tok, "toy", items, [None, "e"], spec=SPEC)
    for route in (None, "e"):
        torch.testing.assert_close(torch.tensor(scored[route].item_nll), torch.tensor(separate[route].item_nll), atol=1e-4, rtol=1e-5)
        assert scored[route].item_tokens == separate[route].item_tokens and scored[route].item_outputs == ()
        assert abs(scored[route].loss - separate[route].loss) < 1e-5
    assert scored[None].item_nll != scored["e"].item_nll
