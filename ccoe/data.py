"""Domain data: records -> (prompt, response) examples -> token ids with response-only labels.

Records come from a local file or folder (jsonl/json/parquet/csv, read with HF `datasets`), a hub
dataset name (the real `datasets.load_dataset` path), or in-memory rows. The split into train and
validation is a pure function of each example's content (sha256), so it is deterministic, needs no
shuffling state, and an example keeps its side when others are added. The data fingerprint hashes
the examples in order: it is the lineage key logged with every expert.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ccoe.config import DataSpec

IGNORE_INDEX = -100
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


def _local_files(source: str) -> tuple[str, list[str]] | None:
    path = Path(source).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _FORMATS)
        if not files:
            raise FileNotFoundError(f"data folder {path} holds no {'/'.join(_FORMATS)} files")
    elif any(ch in source for ch in "*?["):
        files = sorted(Path().glob(source)) if not path.is_absolute() else sorted(Path("/").glob(source.lstrip("/")))
        if not files:
            raise FileNotFoundError(f"data glob {source!r} matches no files")
    else:
        return None
    kinds = {_FORMATS.get(p.suffix) for p in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(f"data files must all be one of {sorted(_FORMATS)}; got {[p.name for p in files]}")
    return kinds.pop(), [str(p) for p in files]


def load_records(spec: DataSpec) -> list[dict]:
    """Rows of the configured source as plain dicts, in a stable order."""
    if spec.records is not None:
        rows = [dict(r) for r in spec.records]
    else:
        import datasets

        local = _local_files(spec.source)
        if local is not None:
            kind, files = local
            dataset = datasets.load_dataset(kind, data_files=files, split="train")
        else:
            try:
                dataset = datasets.load_dataset(spec.source, spec.subset, split=spec.split)
            except Exception as err:  # datasets raises many types for an unreachable or unknown hub name
                raise FileNotFoundError(
                    f"data source {spec.source!r} is neither a local file/folder nor a loadable hub dataset: {err}"
                ) from None
        rows = [dict(r) for r in dataset]
    return rows[: spec.limit] if spec.limit else rows


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _render(record: dict, row: int, field: str, template: str | None) -> str:
    names = _fields(template) if template else [field]
    missing = [n for n in names if n not in record or record[n] is None]
    if missing:
        raise ValueError(f"data row {row} is missing required field {missing[0]!r} (row has fields: {sorted(record)})")
    return template.format(**record) if template else str(record[field])


def to_examples(records: Sequence[dict], spec: DataSpec) -> list[Example]:
    """Map records through the templates; a missing field is an error naming the field and the row."""
    return [
        Example(
            prompt=_render(r, i, spec.prompt_field, spec.prompt_template),
            response=_render(r, i, spec.response_field, spec.response_template),
        )
        for i, r in enumerate(records)
    ]


def data_fingerprint(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps([ex.prompt, ex.response], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def split_examples(examples: Sequence[Example], val_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Deterministic content-hash split; at least one validation example when val_fraction > 0."""
    def bucket(ex: Example) -> float:
        h = hashlib.sha256(f"{seed}\x00{ex.prompt}\x00{ex.response}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    train = [ex for ex in examples if bucket(ex) >= val_fraction]
    val = [ex for ex in examples if bucket(ex) < val_fraction]
    if val_fraction > 0 and not val and len(train) > 1:
        lowest = min(range(len(train)), key=lambda i: bucket(train[i]))
        val = [train.pop(lowest)]
    return train, val


def encode_prompt(tokenizer, prompt: str, use_chat_template: bool = True, system_prompt: str | None = None) -> list[int]:
    """A user prompt as token ids, through the tokenizer's chat template when it has one.

    Training (`encode_example`), scoring and generation all encode prompts here, so they agree.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix = f"{system_prompt}\n" if system_prompt else ""
    return tokenizer(prefix + prompt)["input_ids"]


def encode_example(example: Example, tokenizer, spec: DataSpec) -> dict[str, list[int]]:
    """Token ids and labels for one example; labels are IGNORE_INDEX on the prompt.

    The prompt goes through the tokenizer's chat template when it has one (and `use_chat_template`).
    The response ends with EOS. Too long: the response keeps at least half of `max_length`, the
    prompt is cut from the left (its end, next to the answer, matters most).
    """
    prompt_ids = encode_prompt(tokenizer, example.prompt, spec.use_chat_template, spec.system_prompt)
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    limit = spec.max_length
    if len(prompt_ids) + len(response_ids) > limit:
        response_ids = response_ids[: limit - min(len(prompt_ids), limit // 2)]
        prompt_ids = prompt_ids[len(prompt_ids) - (limit - len(response_ids)):]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


@dataclass
class PreparedData:
    """A domain's tokenized splits plus lineage."""

    train: list[dict[str, list[int]]]
    val: list[dict[str, list[int]]]
    fingerprint: str
    num_examples: int


def prepare_data(spec: DataSpec, tokenizer) -> PreparedData:
    if tokenizer is None:
        raise ValueError("training data needs a tokenizer: use a backbone checkpoint that ships one")
    examples = to_examples(load_records(spec), spec)
    if not examples:
        raise ValueError(f"data source {spec.source or 'records'} yielded no examples")
    train, val = split_examples(examples, spec.val_fraction, spec.seed)
    return PreparedData(
        train=[encode_example(ex, tokenizer, spec) for ex in train],
        val=[encode_example(ex, tokenizer, spec) for ex in val],
        fingerprint=data_fingerprint(examples),
        num_examples=len(examples),
    )


def collate(items: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids/attention_mask/labels (B, T); `index` (B,) names the examples."""
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        ids[row, :n] = torch.tensor(it["input_ids"])
        labels[row, :n] = torch.tensor(it["labels"])
        mask[row, :n] = 1
    index = torch.tensor([it.get("index", -1) for it in items], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": index}
