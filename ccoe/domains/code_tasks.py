"""Code: generated function-writing tasks shaped like HumanEval prompts (docstring with `>>>` examples).

Why: the standard library's functions (`ccoe.domains.code`) teach the answer's form (a fenced
function without its docstring) but not the task HumanEval sets: read a short specification with
worked examples, then write a small self-contained function. These families are generic beginner
exercises over lists, strings, numbers and dicts, written for this module. Each family has a few
names, phrasings and reference bodies; every variant gets its own example inputs, and the outputs
shown in its docstring are computed by running the reference in the code sandbox (`example_outputs`).

Held-out hygiene (checked in `decontaminated` and by a test): no generated function is named like a
HumanEval entry point, and no docstring shares an 8-word sequence with any HumanEval prompt.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ccoe.domains.sandbox import run_python

NGRAM = 8


@dataclass(frozen=True)
class Family:
    """One exercise: `{name}` and `{params}` fill the signature; each body is a reference solution."""

    names: tuple[str, ...]
    params: str
    returns: str
    docs: tuple[str, ...]
    bodies: tuple[str, ...]
    inputs: Callable[[random.Random], tuple]


def _ints(r: random.Random, low: int = -9, high: int = 20, most: int = 7) -> list[int]:
    return [r.randint(low, high) for _ in range(r.randint(0, most))]


WORDS = ("apple", "river", "stone", "cloud", "tiger", "lamp", "orbit", "maple", "quiet", "brave", "echo", "delta",
         "pixel", "amber", "nova", "ridge", "plum", "wolf", "ivy", "zest", "cedar", "flint", "harbor", "sky")


def _words(r: random.Random, most: int = 6) -> list[str]:
    return [r.choice(WORDS) for _ in range(r.randint(1, most))]


def _sentence(r: random.Random) -> str:
    return " ".join(_words(r))


def _grid(r: random.Random, square: bool = False) -> list[list[int]]:
    rows = r.randint(1, 3)
    columns = rows if square else r.randint(1, 3)
    return [[r.randint(0, 9) for _ in range(columns)] for _ in range(rows)]


def _same_length_pair(r: random.Random) -> tuple[list[int], list[int]]:
    n = r.randint(0, 5)
    return [r.randint(-5, 9) for _ in range(n)], [r.randint(-5, 9) for _ in range(n)]


def _numbers_and_rank(r: random.Random) -> tuple[list[int], int]:
    numbers = [r.randint(-9, 20) for _ in range(r.randint(1, 7))]
    return numbers, r.randint(1, len(numbers))


def _word_and_candidate(r: random.Random) -> tuple[str, str]:
    word = r.choice(WORDS)
    return word, "".join(r.sample(word, len(word))) if r.random() < 0.5 else r.choice(WORDS)


FAMILIES: tuple[Family, ...] = (
    Family(("sum_of_multiples", "total_of_multiples"), "numbers: list[int], k: int", "int",
           ("Return the sum of the numbers in the list that are divisible by k.",
            "Add up every element of numbers that is a multiple of k and return the total."),
           ("return sum(n for n in numbers if n % k == 0)",
            "total = 0\nfor n in numbers:\n    if n % k == 0:\n        total += n\nreturn total"),
           lambda r: (_ints(r), r.randint(2, 5))),
    Family(("count_above", "how_many_exceed"), "values: list[int], limit: int", "int",
           ("Count how many values are strictly greater than limit.",
            "Return the number of elements of values that exceed limit."),
           ("return sum(1 for v in values if v > limit)", "return len([v for v in values if v > limit])"),
           lambda r: (_ints(r), r.randint(0, 10))),
    Family(("cumulative_sums", "prefix_totals"), "numbers: list[int]", "list[int]",
           ("Return a list whose i-th element is the sum of the first i + 1 numbers.",
            "Given a list of integers, return the running totals from left to right."),
           ("result = []\ntotal = 0\nfor n in numbers:\n    total += n\n    result.append(total)\nreturn result",),
           lambda r: (_ints(r),)),
    Family(("chunk_list", "split_into_groups"), "items: list[int], size: int", "list[list[int]]",
           ("Split items into consecutive groups of the given size; the last group may be shorter.",
            "Return the list cut into pieces of length size, in order (the final piece can be smaller)."),
           ("return [items[i:i + size] for i in range(0, len(items), size)]",),
           lambda r: (_ints(r, 0, 9, 9), r.randint(1, 4))),
    Family(("transpose_grid", "flip_rows_and_columns"), "grid: list[list[int]]", "list[list[int]]",
           ("Return the transpose of a rectangular grid given as a list of rows.",
            "Turn the rows of the grid into columns and return the new grid."),
           ("return [list(column) for column in zip(*grid)]",
            "if not grid:\n    return []\nreturn [[row[j] for row in grid] for j in range(len(grid[0]))]"),
           lambda r: (_grid(r),)),
    Family(("rotate_left", "shift_items_left"), "items: list[int], k: int", "list[int]",
           ("Rotate the list to the left by k positions and return the result.",
            "Move the first k elements of items to the end (k may exceed the length) and return the new list."),
           ("if not items:\n    return []\nk %= len(items)\nreturn items[k:] + items[:k]",),
           lambda r: (_ints(r, 0, 9), r.randint(0, 6))),
    Family(("letter_counts", "character_tally"), "text: str", "dict[str, int]",
           ("Return a dictionary mapping each character of text to the number of times it occurs.",
            "Count every character in the string and return the counts as a dict."),
           ("counts = {}\nfor ch in text:\n    counts[ch] = counts.get(ch, 0) + 1\nreturn counts",),
           lambda r: ("".join(r.choice("abcab") for _ in range(r.randint(0, 6))),)),
    Family(("word_sizes", "lengths_of_words"), "sentence: str", "list[int]",
           ("Return the length of each word in the sentence, in order. Words are separated by spaces.",
            "Split the sentence on whitespace and return a list with the number of letters of each word."),
           ("return [len(word) for word in sentence.split()]",),
           lambda r: (_sentence(r),)),
    Family(("capitalize_each", "title_words"), "sentence: str", "str",
           ("Return the sentence with the first letter of every word in upper case; words are separated by single spaces.",
            "Make each space-separated word start with a capital letter and return the new sentence."),
           ("return ' '.join(word[:1].upper() + word[1:] for word in sentence.split(' '))",),
           lambda r: (_sentence(r),)),
    Family(("longest_word_in", "widest_word"), "sentence: str", "str",
           ("Return the longest word of the sentence; if several are equally long, return the first of them.",
            "Find the word with the most characters (the earliest one on a tie) and return it."),
           ("best = ''\nfor word in sentence.split():\n    if len(word) > len(best):\n        best = word\nreturn best",),
           lambda r: (_sentence(r),)),
    Family(("merge_ascending", "combine_sorted"), "first: list[int], second: list[int]", "list[int]",
           ("Both lists are sorted in ascending order. Return one ascending list with all their elements.",
            "Merge two already sorted lists into a single sorted list and return it."),
           ("result = []\ni = j = 0\nwhile i < len(first) and j < len(second):\n    if first[i] <= second[j]:\n"
            "        result.append(first[i])\n        i += 1\n    else:\n        result.append(second[j])\n        j += 1\n"
            "return result + first[i:] + second[j:]",
            "return sorted(first + second)"),
           lambda r: (sorted(_ints(r)), sorted(_ints(r)))),
    Family(("alternate_items", "weave_lists"), "left: list[int], right: list[int]", "list[int]",
           ("Return the elements of left and right alternately, starting with left; leftovers of the longer list go at the end.",
            "Interleave the two lists element by element and append what remains of the longer one."),
           ("result = []\nfor i in range(max(len(left), len(right))):\n    if i < len(left):\n        result.append(left[i])\n"
            "    if i < len(right):\n        result.append(right[i])\nreturn result",),
           lambda r: (_ints(r, 0, 9, 4), _ints(r, 10, 19, 4))),
    Family(("position_of", "locate_value"), "items: list[int], target: int", "int",
           ("Return the index of the first occurrence of target in items, or -1 when it does not occur.",
            "Find where target first appears in the list; return -1 if it is absent."),
           ("for i, item in enumerate(items):\n    if item == target:\n        return i\nreturn -1",),
           lambda r: (_ints(r, 0, 6), r.randint(0, 6))),
    Family(("zero_negatives", "floor_at_zero"), "numbers: list[int]", "list[int]",
           ("Return a copy of the list in which every negative number is replaced by 0.",
            "Replace the values below zero with zero and return the new list."),
           ("return [max(n, 0) for n in numbers]", "return [n if n >= 0 else 0 for n in numbers]"),
           lambda r: (_ints(r),)),
    Family(("product_of", "multiply_all"), "numbers: list[int]", "int",
           ("Return the product of all numbers in the list; the product of an empty list is 1.",
            "Multiply the elements together and return the result (1 for an empty list)."),
           ("result = 1\nfor n in numbers:\n    result *= n\nreturn result",),
           lambda r: (_ints(r, -3, 5, 5),)),
    Family(("limit_range", "clip_values"), "numbers: list[int], low: int, high: int", "list[int]",
           ("Return the numbers with every value below low raised to low and every value above high lowered to high.",
            "Clamp each number into the interval [low, high] and return the new list."),
           ("return [min(max(n, low), high) for n in numbers]",),
           lambda r: (_ints(r), r.randint(-3, 2), r.randint(5, 12))),
    Family(("count_words", "number_of_words"), "text: str", "int",
           ("Return how many words the text contains; words are separated by whitespace.",
            "Count the whitespace-separated words of text."),
           ("return len(text.split())",),
           lambda r: (_sentence(r),)),
    Family(("swap_keys_and_values", "invert_mapping"), "mapping: dict[str, int]", "dict[int, str]",
           ("Return a new dictionary whose keys are the values of mapping and whose values are its keys. The values are distinct.",
            "Invert the dictionary: each value becomes a key pointing to its original key."),
           ("return {value: key for key, value in mapping.items()}",),
           lambda r: ({w: i for i, w in enumerate(dict.fromkeys(_words(r, 4)))},)),
    Family(("step_differences", "gaps_between"), "numbers: list[int]", "list[int]",
           ("Return the differences between consecutive numbers: element i is numbers[i + 1] - numbers[i].",
            "For each neighbouring pair, subtract the left number from the right one and return the list of results."),
           ("return [b - a for a, b in zip(numbers, numbers[1:])]",),
           lambda r: (_ints(r),)),
    Family(("flatten_once", "join_sublists"), "nested: list[list[int]]", "list[int]",
           ("Return one list holding the elements of every inner list, in order.",
            "Concatenate the inner lists of nested into a single flat list."),
           ("return [item for inner in nested for item in inner]",),
           lambda r: ([_ints(r, 0, 9, 3) for _ in range(r.randint(0, 3))],)),
    Family(("first_seen_order", "drop_repeats"), "items: list[int]", "list[int]",
           ("Return the distinct items in the order in which they first appear.",
            "Keep only the first copy of every value and return the list without the later repeats."),
           ("seen = set()\nresult = []\nfor item in items:\n    if item not in seen:\n        seen.add(item)\n        result.append(item)\nreturn result",
            "return list(dict.fromkeys(items))"),
           lambda r: (_ints(r, 0, 5, 8),)),
    Family(("occurrences_of", "tally_char"), "text: str, ch: str", "int",
           ("Return how many times the character ch appears in text.",
            "Count the positions of text that hold the character ch."),
           ("return text.count(ch)", "return sum(1 for c in text if c == ch)"),
           lambda r: (_sentence(r), r.choice("aeiorst"))),
    Family(("reverse_each_word", "mirror_words"), "sentence: str", "str",
           ("Reverse the letters of every word but keep the words in their order; words are separated by single spaces.",
            "Return the sentence with each space-separated word spelled backwards."),
           ("return ' '.join(word[::-1] for word in sentence.split(' '))",),
           lambda r: (_sentence(r),)),
    Family(("are_anagrams", "same_letters"), "first: str, second: str", "bool",
           ("Return True if the two words use exactly the same letters the same number of times.",
            "Check whether second is a rearrangement of the letters of first."),
           ("return sorted(first) == sorted(second)",),
           _word_and_candidate),
    Family(("run_length", "compress_runs"), "text: str", "str",
           ("Encode runs of repeated characters as the character followed by the run length, e.g. 'aab' becomes 'a2b1'.",
            "Return the run-length encoding of text: each maximal run of one character becomes that character and its count."),
           ("result = ''\ni = 0\nwhile i < len(text):\n    j = i\n    while j < len(text) and text[j] == text[i]:\n        j += 1\n"
            "    result += text[i] + str(j - i)\n    i = j\nreturn result",),
           lambda r: ("".join(r.choice("aab") for _ in range(r.randint(0, 7))),)),
    Family(("pair_up", "dict_from_lists"), "keys: list[str], values: list[int]", "dict[str, int]",
           ("Return a dictionary that maps keys[i] to values[i]; extra elements of the longer list are ignored.",
            "Build a dict from two parallel lists, stopping at the end of the shorter one."),
           ("return dict(zip(keys, values))", "return {keys[i]: values[i] for i in range(min(len(keys), len(values)))}"),
           lambda r: (list(dict.fromkeys(_words(r, 4))), _ints(r, 0, 9, 4))),
    Family(("diagonal_total", "trace_of"), "matrix: list[list[int]]", "int",
           ("The matrix is square. Return the sum of the elements on its main diagonal.",
            "Add matrix[i][i] over every row i of the square matrix and return the sum."),
           ("return sum(matrix[i][i] for i in range(len(matrix)))",),
           lambda r: (_grid(r, square=True),)),
    Family(("reversed_number", "flip_digits"), "n: int", "int",
           ("n is a non-negative integer. Return the integer whose decimal digits are those of n in reverse order.",
            "Reverse the digits of the non-negative integer n (leading zeros of the result disappear)."),
           ("return int(str(n)[::-1])", "result = 0\nwhile n > 0:\n    result = result * 10 + n % 10\n    n //= 10\nreturn result"),
           lambda r: (r.randint(1, 9999),)),
    Family(("odd_squares", "squares_of_odds"), "numbers: list[int]", "list[int]",
           ("Return the squares of the odd numbers of the list, in order.",
            "Keep the odd elements and return each of them squared."),
           ("return [n * n for n in numbers if n % 2 == 1]", "return [n ** 2 for n in numbers if n % 2 != 0]"),
           lambda r: (_ints(r),)),
    Family(("triangular", "sum_one_to_n"), "n: int", "int",
           ("Return the sum 1 + 2 + ... + n for a non-negative integer n.",
            "Compute the n-th triangular number, the sum of all integers from 1 up to n."),
           ("return n * (n + 1) // 2", "return sum(range(1, n + 1))"),
           lambda r: (r.randint(0, 40),)),
    Family(("longest_streak", "max_repeat_run"), "items: list[int]", "int",
           ("Return the length of the longest block of equal neighbouring elements (0 for an empty list).",
            "Find the longest run of consecutive equal values and return its length."),
           ("best = current = 0\nfor i, item in enumerate(items):\n    current = current + 1 if i and item == items[i - 1] else 1\n"
            "    best = max(best, current)\nreturn best",),
           lambda r: (_ints(r, 0, 2, 9),)),
    Family(("group_by_initial", "bucket_by_first_letter"), "words: list[str]", "dict[str, list[str]]",
           ("Group the words by their first letter: map each first letter to the words starting with it, in input order.",
            "Return a dict from initial letter to the list of words that begin with it."),
           ("groups = {}\nfor word in words:\n    groups.setdefault(word[0], []).append(word)\nreturn groups",),
           lambda r: (_words(r),)),
    Family(("add_pairwise", "elementwise_sum"), "first: list[int], second: list[int]", "list[int]",
           ("The lists have the same length. Return the list of sums first[i] + second[i].",
            "Add the two equally long lists position by position."),
           ("return [a + b for a, b in zip(first, second)]",),
           _same_length_pair),
    Family(("kth_smallest_value", "order_statistic"), "numbers: list[int], k: int", "int",
           ("Return the k-th smallest number of the list (k = 1 is the minimum); the list has at least k elements.",
            "Sort a copy of the numbers and return the element that would be at position k, counting from 1."),
           ("return sorted(numbers)[k - 1]",),
           _numbers_and_rank),
    Family(("keys_with_largest", "top_scorers"), "scores: dict[str, int]", "list[str]",
           ("Return the sorted list of keys whose value equals the largest value (an empty list for an empty dict).",
            "Find every key that has the maximum score and return those keys in alphabetical order."),
           ("if not scores:\n    return []\nbest = max(scores.values())\nreturn sorted(k for k, v in scores.items() if v == best)",),
           lambda r: ({w: r.randint(0, 3) for w in _words(r, 5)},)),
)


@dataclass(frozen=True)
class Draft:
    """A task before its examples' outputs are known: the chosen name, phrasing and body, and the inputs."""

    name: str
    signature: str
    doc: str
    source: str
    calls: tuple[tuple, ...]


def draft(family: Family, rng: random.Random) -> Draft:
    name, doc, body = rng.choice(family.names), rng.choice(family.docs), rng.choice(family.bodies)
    signature = f"def {name}({family.params}) -> {family.returns}:"
    source = signature + "\n" + "\n".join("    " + line for line in body.splitlines())
    calls = tuple(family.inputs(rng) for _ in range(rng.randint(2, 3)))
    return Draft(name, signature, doc, source, calls)


def example_outputs(drafts: Sequence[Draft]) -> list[list[str]]:
    """The repr of every example call's result, computed by running the reference bodies in the code
    sandbox (`ccoe.domains.sandbox`, as the scorer runs model output): one program for all drafts, each
    function under its own name, printing one JSON list. Why the sandbox for our own source: nothing
    in the library executes generated text in its own process."""
    lines = ["import json", "results = []"]
    for i, d in enumerate(drafts):
        lines.append(d.source.replace(f"def {d.name}(", f"def _task_{i}(", 1))
        lines.append(f"results.append([repr(_task_{i}(*args)) for args in {[list(c) for c in d.calls]!r}])")
    lines.append("print(json.dumps(results))")
    program = "\n".join(lines)
    result = run_python(program, timeout_s=60, output_chars=len(program) * 4 + 100_000)
    if not result.passed:
        raise RuntimeError(f"the reference solutions failed in the sandbox: {result.output[-1500:]}")
    outputs = json.loads(result.output.strip().splitlines()[-1])
    if [len(o) for o in outputs] != [len(d.calls) for d in drafts] or not all(isinstance(s, str) for o in outputs for s in o):
        raise RuntimeError("the sandbox returned example outputs of the wrong shape")
    return outputs


def render_all(drafts: Sequence[Draft]) -> list[dict]:
    """HumanEval-shaped tasks: {code_prompt (signature + docstring with 2-3 examples), response}."""
    tasks = []
    for d, outputs in zip(drafts, example_outputs(drafts)):
        examples = [f"    >>> {d.name}({', '.join(repr(a) for a in args)})\n    {out}" for args, out in zip(d.calls, outputs)]
        tasks.append({"code_prompt": f'{d.signature}\n    """{d.doc}\n' + "\n".join(examples) + '\n    """\n', "response": d.source})
    return tasks


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def decontaminated(tasks: list[dict], held_out: list[dict]) -> list[dict]:
    """`tasks` without any whose function name is a held-out entry point (ignoring case: MBPP writes
    `decimal_To_Binary`) or whose prompt shares an `NGRAM`-word sequence with a held-out prompt (the
    standard n-gram overlap check)."""
    names = {p["entry_point"].lower() for p in held_out}
    seen = set().union(*(ngrams(p["prompt"]) for p in held_out)) if held_out else set()
    return [t for t in tasks if re.search(r"^def (\w+)", t["code_prompt"], re.M)[1].lower() not in names and not ngrams(t["code_prompt"]) & seen]


def generated_tasks(count: int, seed: int = 0) -> list[dict]:
    """`count` distinct tasks, families in turn, each variant with its own name, phrasing, body and examples."""
    rng = random.Random(seed)
    drafts, seen = [], set()
    for attempt in range(count * 20):
        d = draft(FAMILIES[attempt % len(FAMILIES)], rng)
        key = (d.signature, d.doc, repr(d.calls))
        if key not in seen:
            seen.add(key)
            drafts.append(d)
        if len(drafts) == count:
            break
    return render_all(drafts)
