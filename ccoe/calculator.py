"""A calculator inside decoding: when a row's line ends with an arithmetic expression and "=", the
result is written into the row for the model, which then goes on from the right number.

This is how GSM8K's calculator annotations were used at sampling time (Cobbe et al. 2021, "Training
Verifiers to Solve Math Word Problems": when the model writes `<<48/2=`, the calculator writes
`24>>`). The math domain's responses are lines of the same shape (`12 * 7 = 84`), so its expert's
completions carry the trigger without new training. Why a tool and not more training: a 135M model
picks the right operations far more often than it multiplies three-digit numbers right, and one
wrong product spoils every later step.

The expression is untrusted model output: it is parsed by a small recursive-descent parser over
numbers, `+ - * / × ÷ ( )`, `x` between spaces and `P% of Y`; nothing is evaluated by Python, sizes
are bounded (at most 40 tokens, numbers of at most 15 digits, results below 1e15), and anything else
(words, variables, a division by zero) is no trigger: the model writes what it writes.

Results: an integer when exact; `q remainder r` for one integer division that leaves a remainder
(the math domain's notation for sharing problems); otherwise a decimal with at most 4 places.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from fractions import Fraction

MAX_TOKENS = 40
MAX_DIGITS = 15
MAX_VALUE = Fraction(10) ** 15

_LEXEME = re.compile(r"\s*(\d[\d,]*(?:\.\d+)?|[-+*/×÷()%]|(?<=\s)x(?=\s)|of\b|\$)")


class _Unparsable(ValueError):
    pass


def _lex(text: str) -> list[str] | None:
    """Tokens of a whole arithmetic text, or None when anything else is in it."""
    tokens, at = [], 0
    text = text.rstrip()
    while at < len(text):
        m = _LEXEME.match(text, at)
        if not m or m.end() == at:
            return None
        if m.group(1) != "$":
            tokens.append(m.group(1))
        at = m.end()
    return tokens


def _number(token: str) -> Fraction:
    digits = token.replace(",", "")
    if "," in token and not re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", token):
        raise _Unparsable(f"misplaced comma in {token!r}")
    if len(digits.replace(".", "")) > MAX_DIGITS:
        raise _Unparsable("number too long")
    return Fraction(digits)


class _Parser:
    """expr := term (('+'|'-') term)*; term := factor (('*'|'/'|'×'|'÷'|'x') factor)*;
    factor := '-' factor | number ['%' ['of' factor]] | '(' expr ')'."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.at, self.operators, self.divisions = tokens, 0, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Unparsable("expression ends early")
        self.at += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op, self.operators = self.take(), self.operators + 1
            value = value + self.term() if op == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/", "×", "÷", "x"):
            op, self.operators = self.take(), self.operators + 1
            right = self.factor()
            if op in ("/", "÷"):
                if right == 0:
                    raise _Unparsable("division by zero")
                self.divisions += 1
                value = value / right
            else:
                value = value * right
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token == "-":
            return -self.factor()
        if token == "(":
            value = self.expr()
            if self.take() != ")":
                raise _Unparsable("unbalanced parenthesis")
            return value
        if not token[0].isdigit():
            raise _Unparsable(f"unexpected {token!r}")
        value = _number(token)
        if self.peek() == "%":
            self.take()
            value = value / 100
            if self.peek() == "of":
                self.take()
                self.operators += 1
                value = value * self.factor()
        return value


def evaluate(expression: str) -> str | None:
    """The value of an arithmetic expression as the calculator writes it, or None when the text is
    not one (words, a lone number, a division by zero, too long)."""
    tokens = _lex(expression)
    if not tokens or len(tokens) > MAX_TOKENS:
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expr()
    except _Unparsable:
        return None
    if parser.at != len(tokens) or parser.operators == 0 or abs(value) >= MAX_VALUE:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    whole = [t for t in tokens if t[0].isdigit()]
    if parser.divisions == 1 and len(tokens) == 3 and tokens[1] in ("/", "÷") and all("." not in t for t in whole) and value > 0:
        quotient = value.numerator // value.denominator
        dividend, divisor = _number(tokens[0]), _number(tokens[2])
        return f"{quotient} remainder {int(dividend - quotient * divisor)}"
    return f"{float(value):.4f}".rstrip("0").rstrip(".")


def result_for(text: str) -> str | None:
    """What the calculator writes after `text`, when its last line ends with "<expression> =": the
    longest tail of the line before "=" that is an expression gives the value (" 84"), else None."""
    line = text.rsplit("\n", 1)[-1]
    stripped = line.rstrip(" ")
    if not stripped.endswith("=") or stripped.endswith("=="):
        return None
    left = stripped[:-1]
    if left.rstrip().endswith(("<", ">", "!", "=")):
        return None
    starts = [0] + [m.end() for m in re.finditer(r"[\s:;,]+", left)]
    for start in starts:
        value = evaluate(left[start:])
        if value is not None:
            return value if line.endswith(" ") else f" {value}"
    return None


@dataclass(frozen=True)
class Calculator:
    """The calculator as a decoding tool (`ccoe.generation.generate(tools=...)`): `triggers` are the
    token ids whose text holds "=" (only after one of them can a line end with "="), and calling it
    with a row's new tokens gives the token ids to write next (empty: nothing to write)."""

    tokenizer: object
    triggers: frozenset[int]

    @classmethod
    def for_tokenizer(cls, tokenizer) -> Calculator:
        """One per tokenizer, kept: scanning the vocabulary costs 31 ms for SmolLM2's 49k tokens (more
        for Gemma's 262k), and every planned request would pay it again."""
        return _calculator_for(tokenizer)

    def __call__(self, tokens: list[int]) -> list[int]:
        value = result_for(self.tokenizer.decode(tokens, skip_special_tokens=True))
        if value is None:
            return []
        return list(self.tokenizer(value, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=8)
def _calculator_for(tokenizer) -> Calculator:
    return Calculator(tokenizer, frozenset(i for token, i in tokenizer.get_vocab().items() if "=" in token))
