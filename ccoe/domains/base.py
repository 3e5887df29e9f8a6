"""What every domain provides, and the shared machinery: prepared files, data cards, choice parsing.

A domain builds deterministic train and eval rows offline. Train rows are `{prompt, response}`; eval
rows add what the scorer needs. Two kinds of task:
- `generate`: the model writes an answer, `score(item, completion_text)` returns 1.0 or 0.0;
- `choice`: the model picks among `item["choices"]` (continuations of the prompt) by
  length-normalised log-likelihood, `score(item, chosen_index)` returns 1.0 or 0.0.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

from ccoe.config import DomainRules
from ccoe.domains.sources import data_root

Task = Literal["generate", "choice"]
PREPARED_VERSION = 6  # 2: code responses without docstrings, self-contained functions only; 3: choice rows keep options, generated code exercises; 4: law and medical train on decontaminated MMLU / MedMCQA questions too; 5: code trains on MBPP's problems too; 6: MBPP tasks that fit, print as compared and are no HumanEval problem


@dataclass(frozen=True)
class DataCard:
    source: str
    license: str
    train: str
    eval: str
    metric: str


class Domain(Protocol):
    name: str
    task: Task
    card: DataCard
    rules: DomainRules
    routing_queries: tuple[str, ...]

    def build(self) -> tuple[list[dict], list[dict]]:
        """(train rows, eval rows), the same every time."""

    def score(self, item: dict, output) -> float:
        """1.0 when `output` (completion text, or chosen index for choice tasks) is right, else 0.0."""

    def complete(self, text: str) -> bool:
        """For generate tasks: True once no further text can change `score` (evaluation ends the row there)."""


def content_hash(text: str) -> float:
    """A stable number in [0, 1) for a string: deterministic splits without shuffling state."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def split_by_hash(rows: list[dict], eval_fraction: float, key: str = "prompt") -> tuple[list[dict], list[dict]]:
    train = [r for r in rows if content_hash(r[key]) >= eval_fraction]
    held = [r for r in rows if content_hash(r[key]) < eval_fraction]
    return train, held


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


@dataclass(frozen=True)
class PreparedDomain:
    name: str
    train: Path
    eval: Path
    card: Path


def prepare_domain(domain: Domain, force: bool = False) -> PreparedDomain:
    """Write `<data>/domains/<name>/{train,eval}.jsonl` and `card.json` once (idempotent).

    Train rows whose prompt also appears in eval are dropped, so the splits never overlap.
    """
    folder = data_root() / "domains" / domain.name
    files = PreparedDomain(domain.name, folder / "train.jsonl", folder / "eval.jsonl", folder / "card.json")
    if not force and files.card.is_file() and json.loads(files.card.read_text()).get("version") == PREPARED_VERSION:
        return files
    train, held = domain.build()
    held_prompts = {r["prompt"] for r in held}
    train = [r for r in train if r["prompt"] not in held_prompts]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(files.train, train)
    write_jsonl(files.eval, held)
    card = {"version": PREPARED_VERSION, "domain": domain.name, "task": domain.task, **asdict(domain.card),
            "train_rows": len(train), "eval_rows": len(held)}
    tmp = files.card.with_name(f".card.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(card, indent=2))
    tmp.replace(files.card)
    return files


def validation_scorable(domain) -> bool:
    """Whether `domain` has a validation metric: a choice domain's rows keep their options; a generate
    domain needs `validation_item` to turn a held-out row into a scorable item (code: its `>>>` examples)."""
    return domain.task == "choice" or hasattr(domain, "validation_item")


def scorable_rows(domain, rows: list[dict]) -> list[dict]:
    """The held-out training `rows` `domain`'s scorer can score: a generate domain's through its optional
    `validation_item` (code: rows whose `>>>` examples become tests), the rest left out; [] for a generate
    domain without one; for a choice domain, the rows that keep their options and answer."""
    if domain.task == "choice":
        return [row for row in rows if "choices" in row and "answer" in row]
    if not validation_scorable(domain):
        return []
    return [item for row in rows if (item := domain.validation_item(row)) is not None]


# -- multiple choice ----------------------------------------------------------------------------------


def choice_item(question: str, options: list[str], answer: int) -> dict:
    """A multiple-choice eval row: the prompt lists the options; each choice continues with its letter and text."""
    letters = "ABCDEFGH"
    listing = "\n".join(f"{letters[i]}. {text}" for i, text in enumerate(options))
    prompt = f"{question.strip()}\n\n{listing}\n\nAnswer with the letter and the text of the correct option."
    choices = [f"{letters[i]}. {text}" for i, text in enumerate(options)]
    return {"prompt": prompt, "response": choices[answer], "choices": choices, "answer": answer}


def score_choice(item: dict, chosen: int) -> float:
    return 1.0 if int(chosen) == int(item["answer"]) else 0.0
