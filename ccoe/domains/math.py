"""Math: multi-step arithmetic word problems generated with exact integer answers.

Twelve templates (shopping and change, rates and time, sharing, percentages, averages, area, ...)
with names, items and number ranges drawn from a seeded generator. Responses show the steps and end
with "The answer is N." The metric is exact match of the final number in the completion.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ccoe.config import DomainRules
from ccoe.domains.base import DataCard

def _first(drawn: int, first: int | None) -> tuple[int, str]:
    """(value, how the question shows it): the drawn number, or a given one written as N."""
    return (drawn, str(drawn)) if first is None else (first, "N")


NAMES = ["Ava", "Liam", "Maya", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Sofia", "Kenji", "Amara", "Diego", "Nina", "Felix"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells", "stamps", "balloons"]


def _p1(r, first=None):
    n, a, b, c = r.choice(NAMES), r.randint(10, 90), r.randint(5, 60), r.randint(1, 40)
    it = r.choice(ITEMS)
    a, shown = _first(a, first)
    c = min(c, a + b)
    q = f"{n} has {shown} {it}. {n} buys {b} more and then gives {c} to a friend. How many {it} does {n} have now?"
    return q, [f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}"], a + b - c


def _p2(r, first=None):
    n, price, count = r.choice(NAMES), r.randint(2, 25), r.randint(2, 9)
    count, shown = _first(count, first)
    bill = next((x for x in (20, 50, 100, 200, 500) if x >= price * count), None)
    if bill is None:  # only a given count can cost more than the biggest bill
        return None
    q = f"A shop sells notebooks for ${price} each. {n} buys {shown} notebooks and pays with a ${bill} bill. How much change does {n} get, in dollars?"
    return q, [f"{count} * {price} = {count * price}", f"{bill} - {count * price} = {bill - count * price}"], bill - count * price


def _p3(r, first=None):
    s1, h1, s2, h2 = r.randint(30, 120), r.randint(1, 6), r.randint(30, 120), r.randint(1, 6)
    s1, shown = _first(s1, first)
    q = f"A train travels at {shown} km per hour for {h1} hours, then at {s2} km per hour for {h2} hours. How many kilometres does it travel in total?"
    return q, [f"{s1} * {h1} = {s1 * h1}", f"{s2} * {h2} = {s2 * h2}", f"{s1 * h1} + {s2 * h2} = {s1 * h1 + s2 * h2}"], s1 * h1 + s2 * h2


def _p4(r, first=None):
    boxes, per, broken = r.randint(3, 15), r.randint(6, 24), r.randint(1, 20)
    it = r.choice(ITEMS)
    boxes, shown = _first(boxes, first)
    total = boxes * per
    broken = min(broken, total)
    q = f"There are {shown} boxes with {per} {it} in each box. {broken} of the {it} are damaged. How many {it} are not damaged?"
    return q, [f"{boxes} * {per} = {total}", f"{total} - {broken} = {total - broken}"], total - broken


def _p5(r):
    friends, each, extra = r.randint(2, 8), r.randint(3, 20), r.randint(0, 9)
    extra = extra % friends
    it = r.choice(ITEMS)
    total = friends * each + extra
    q = f"{total} {it} are shared equally among {friends} friends, and the ones left over are kept aside. How many {it} does each friend get?"
    return q, [f"{total} / {friends} = {each} remainder {extra}"], each


def _p6(r):
    price, pct = r.randint(2, 40) * 20, r.choice([5, 10, 15, 20, 25, 30, 40, 50])
    off = price * pct // 100
    q = f"A jacket costs ${price}. It is on sale for {pct}% off. What is the sale price in dollars?"
    return q, [f"{pct}% of {price} = {off}", f"{price} - {off} = {price - off}"], price - off


def _p7(r):
    k = r.randint(3, 6)
    scores = [r.randint(50, 100) for _ in range(k - 1)]
    mean = r.randint(max(scores) - 10, max(scores))
    last = mean * k - sum(scores)
    if not 0 <= last <= 100:
        return _p1(r)
    n = r.choice(NAMES)
    q = f"{n} scored {', '.join(map(str, scores))} on {k - 1} tests. What score does {n} need on the next test to average exactly {mean} over {k} tests?"
    return q, [f"{mean} * {k} = {mean * k}", f"{' + '.join(map(str, scores))} = {sum(scores)}", f"{mean * k} - {sum(scores)} = {last}"], last


def _p8(r, first=None):
    length, width, cut = r.randint(5, 30), r.randint(4, 20), r.randint(1, 4)
    length, shown = _first(length, first)
    cut = min(cut, width - 1)
    q = f"A garden is {shown} metres long and {width} metres wide. A path takes a strip {cut} metres wide along its whole length. What area of garden is left, in square metres?"
    return q, [f"{width} - {cut} = {width - cut}", f"{length} * {width - cut} = {length * (width - cut)}"], length * (width - cut)


def _p9(r, first=None):
    n, pages, days, last = r.choice(NAMES), r.randint(5, 40), r.randint(2, 12), r.randint(1, 30)
    pages, shown = _first(pages, first)
    q = f"{n} reads {shown} pages a day for {days} days and then {last} pages on the last day. How many pages does {n} read in all?"
    return q, [f"{pages} * {days} = {pages * days}", f"{pages * days} + {last} = {pages * days + last}"], pages * days + last


def _p10(r, first=None):
    a, times, less = r.randint(3, 30), r.randint(2, 6), r.randint(1, 10)
    n1, n2 = r.sample(NAMES, 2)
    it = r.choice(ITEMS)
    a, shown = _first(a, first)
    b = a * times - less
    if first is not None and b < 0:
        return None
    q = f"{n1} has {shown} {it}. {n2} has {less} fewer than {times} times as many as {n1}. How many {it} do they have together?"
    return q, [f"{a} * {times} = {a * times}", f"{a * times} - {less} = {b}", f"{a} + {b} = {a + b}"], a + b


def _p11(r, first=None):
    wage, hours, days, spent = r.randint(8, 30), r.randint(2, 8), r.randint(2, 7), r.randint(10, 100)
    wage, shown = _first(wage, first)
    earned = wage * hours * days
    spent = min(spent, earned)
    n = r.choice(NAMES)
    q = f"{n} earns ${shown} an hour and works {hours} hours a day for {days} days, then spends ${spent}. How many dollars does {n} have left?"
    return q, [f"{wage} * {hours} = {wage * hours}", f"{wage * hours} * {days} = {earned}", f"{earned} - {spent} = {earned - spent}"], earned - spent


def _p12(r):
    start, per_min, minutes = r.randint(100, 900), r.randint(2, 15), r.randint(5, 40)
    used = per_min * minutes
    start = max(start, used)
    q = f"A tank holds {start} litres of water. Water drains out at {per_min} litres per minute for {minutes} minutes. How many litres remain?"
    return q, [f"{per_min} * {minutes} = {used}", f"{start} - {used} = {start - used}"], start - used


TEMPLATES = [_p1, _p2, _p3, _p4, _p5, _p6, _p7, _p8, _p9, _p10, _p11, _p12]
# Templates whose first quantity can be any count 1-99 given from outside, written "N" in the question
# (`first=`): composed tasks (`ccoe.domains.composed`) feed an SQL count into them. The others would
# need their other numbers to change with it (shares, a sale price, test scores, the tank's contents).
WITH_FIRST = (_p1, _p2, _p3, _p4, _p8, _p9, _p10, _p11)


def final_number(text: str) -> str | None:
    """The last number in a text ("The answer is 1,234." -> "1234"), or None."""
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    if not numbers:
        return None
    value = numbers[-1].replace(",", "").rstrip(".")
    return value[:-2] if value.endswith(".0") else value


def problem(r: random.Random) -> dict:
    question, steps, answer = r.choice(TEMPLATES)(r)
    return {"prompt": question, "response": "\n".join(steps) + f"\nThe answer is {answer}.", "answer": str(answer)}


@dataclass(frozen=True)
class MathDomain:
    name: str = "math"
    task: str = "generate"
    num_train: int = 3000
    num_eval: int = 120
    seed: int = 1234

    card = DataCard(
        source="generated by ccoe.domains.math (12 templates, seeded)",
        license="Apache-2.0 (generated)",
        train="3000 problems (seed 1234), response = worked steps + 'The answer is N.'",
        eval="120 problems from a separate seed, prompts disjoint from train",
        metric="exact match of the final number in the completion",
    )
    rules = DomainRules(
        keywords=["calculate", "compute", "sum", "product", "difference", "percent", "percentage", "fraction",
                  "equation", "solve", "how many", "how much", "total", "average", "remainder", "divided",
                  "multiply", "integer", "probability", "ratio", "area", "perimeter", "kilometres", "km", "litres",
                  "dollars", "change", "per hour", "in all", "left"],
        patterns=[r"\d+\s*[-+*/^x×÷]\s*\d+", r"\bwhat is \d", r"\b\d+(\.\d+)?\s*%", r"\$\d+"],
    )
    routing_queries = (
        "What is 45 + 17?",
        "A train travels 120 km in 2 hours. How many km per hour is that on average?",
        "Calculate 15% of 240 dollars.",
        "Maya has 12 apples and buys 7 more. How many apples does she have?",
        "A shop sells pens for $3 each. How much do 8 pens cost?",
        "What is the area of a rectangle 7 metres by 9 metres?",
        "Solve for x: 3x + 5 = 20.",
        "What is the average of 4, 8 and 12?",
    )

    def build(self) -> tuple[list[dict], list[dict]]:
        held_rng, train_rng = random.Random(self.seed + 1), random.Random(self.seed)
        held, seen = [], set()
        while len(held) < self.num_eval:
            p = problem(held_rng)
            if p["prompt"] not in seen:
                seen.add(p["prompt"])
                held.append(p)
        train = []
        while len(train) < self.num_train:
            p = problem(train_rng)
            if p["prompt"] not in seen:
                seen.add(p["prompt"])
                train.append({"prompt": p["prompt"], "response": p["response"]})
        return train, held

    def score(self, item: dict, output) -> float:
        return 1.0 if final_number(str(output)) == item["answer"] else 0.0

    def complete(self, text: str) -> bool:
        """Never early: the score reads the last number, which more text can change."""
        return False


MATH = MathDomain()


def template_shards(count: int, per_shard: int, seed: int = 2026) -> list[list[dict]]:
    """`count` shards of `per_shard` distinct problems, shard i drawn only from its own group of the
    templates (TEMPLATES cut into `count` consecutive groups): data whose distribution moves as it
    arrives, which is what a continual update meets and what makes forgetting visible. Rows keep the
    answer, so a shard's held-out rows are scored by the math metric; prompts of the domain's held-out
    set are left out."""
    if not 1 <= count <= len(TEMPLATES):
        raise ValueError(f"count must be 1 to {len(TEMPLATES)} (one template at least per shard), got {count}")
    held = {item["prompt"] for item in MATH.build()[1]}
    groups = [TEMPLATES[i * len(TEMPLATES) // count:(i + 1) * len(TEMPLATES) // count] for i in range(count)]
    shards, seen = [], set(held)
    for number, group in enumerate(groups):
        rng, rows = random.Random(seed + number), []
        while len(rows) < per_shard:
            question, steps, answer = rng.choice(group)(rng)
            if question not in seen:
                seen.add(question)
                rows.append({"prompt": question, "response": "\n".join(steps) + f"\nThe answer is {answer}.", "answer": str(answer)})
        shards.append(rows)
    return shards
