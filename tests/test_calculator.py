"""The calculator inside decoding: what it computes, what it refuses, and how it writes into rows."""

import pytest
import torch

from ccoe.calculator import evaluate, result_for
from ccoe.generation import generate, left_pad


@pytest.mark.parametrize("expression, value", [
    ("12 * 7", "84"), ("3 + 4 * 2", "11"), ("(3 + 4) * 2", "14"), ("100 - 37 - 8", "55"), ("25% of 80", "20"),
    ("15% of 240", "36"), ("23 / 4", "5 remainder 3"), ("24 / 4", "6"), ("7 / 2.0", "3.5"), ("1 / 3 + 1", "1.3333"),
    ("1,200 + 300", "1500"), ("$12 - $5", "7"), ("6 x 7", "42"), ("6 × 7", "42"), ("84 ÷ 4", "21"), ("-5 + 2", "-3"),
    ("10 - 25", "-15"), ("2.5 * 4", "10"),
])
def test_evaluate_computes_exact_arithmetic(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize("expression", [
    "5", "x + 3", "3x + 5", "4 / 0", "2 ** 10", "__import__('os')", "1,20 + 3", "(1 + 2", "1 + 2)", "12 apples + 3",
    "9" * 16 + " + 1", " + ".join(["1"] * 30), "99999999999999 * 99999999999999",
])
def test_evaluate_refuses_what_is_not_bounded_arithmetic(expression):
    assert evaluate(expression) is None


def test_result_for_reads_the_last_line_up_to_its_equals_sign():
    assert result_for("8 * 3 = 24\nTotal: 24 + 9 =") == " 33"
    assert result_for("so 4 * 9 = ") == "36"  # the space is already written
    assert result_for("4 * 9 = 36") is None  # the model wrote the value itself
    assert result_for("The answer is 4 =") is None  # a lone number is no arithmetic
    assert result_for("Solve 3x + 5 =") is None
    assert result_for("if a + 1 ==") is None and result_for("when 3 + 4 <=") is None
    assert result_for("4 * 9 =\n") is None  # the line is over


class WriteAfter:
    """A decoding tool that writes `tokens` after every `trigger` token."""

    def __init__(self, trigger: int, tokens: list[int]):
        self.triggers, self.tokens, self.calls = frozenset({trigger}), tokens, []

    def __call__(self, tokens: list[int]) -> list[int]:
        self.calls.append(list(tokens))
        return list(self.tokens)


def test_a_tool_writes_its_tokens_and_the_row_goes_on_as_if_the_prompt_had_them(model):
    """The written tokens follow the trigger, the model reads them (what follows is what the model
    generates from prompt + trigger + written tokens), and a row without a tool is untouched."""
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    ids, mask = left_pad(prompts, pad_token_id=0)
    free = generate(model, ids, mask, max_new_tokens=10)
    trigger = int(free[0, 1])
    tool = WriteAfter(trigger, [40, 41])
    out = generate(model, ids, mask, max_new_tokens=10, tools=[tool, None])
    assert torch.equal(out[1], free[1])
    first = out[0].tolist().index(trigger)
    assert out[0, :first + 1].tolist() == free[0, :first + 1].tolist()
    assert out[0, first + 1:first + 3].tolist() == [40, 41]
    assert tool.calls[0] == out[0, :first + 1].tolist()
    resumed = generate(model, torch.tensor([prompts[0] + out[0, :first + 3].tolist()]), max_new_tokens=10 - first - 3)
    rest = out[0, first + 3:].tolist()
    if trigger in rest:  # written again after a later trigger: compare up to it
        rest = rest[:rest.index(trigger) + 1]
    assert rest == resumed[0, :len(rest)].tolist()


def test_tools_must_match_the_batch(model):
    with pytest.raises(ValueError, match="tools has 1 entries for a batch of 2"):
        generate(model, torch.tensor([[5, 6], [7, 8]]), max_new_tokens=2, tools=[None])
