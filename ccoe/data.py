"""Domain data: records -> (prompt, response) examples -> token ids with response-only labels.

Records come from local files (jsonl/json/parquet/csv: one file, a folder or a glob), a hub dataset
name (the real `datasets.load_dataset` path), or in-memory rows. Local files are parsed here, not by
`datasets`: its loaders copy every file into the HF cache, leave lock files there when a load fails,
and report a bad line as a long chained traceback (or a bare StopIteration for an empty file). Parsed
here, a file is read once, nothing is written, and every problem is one `DataError` naming the file and
line. The split into train and validation is a pure function of each example's content (sha256), so
it is deterministic, needs no shuffling state, and an example keeps its side when others are added.
The data fingerprint hashes the examples in order: it is the lineage key logged with every expert.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ccoe.config import DataSpec

IGNORE_INDEX = -100
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
CHARS_PER_TOKEN = 32


class DataError(ValueError):
    """Data that cannot become examples: one line that names the file and line (or row) and what to fix.

    Raised `from None`: the parser's own traceback says nothing the message does not.
    """


class Record(dict):
    """One row as a plain dict, plus `origin` (file and line, or row), so an error can point at it."""

    __slots__ = ("origin",)

    def __init__(self, fields: dict | Iterable[tuple[str, object]], origin: str):
        super().__init__(fields)
        self.origin = origin


MAX_CHOICES = 16


@dataclass(frozen=True)
class Example:
    """A prompt and its response; for multiple-choice data also the options (the response is
    `choices[answer]`)."""

    prompt: str
    response: str
    choices: tuple[str, ...] = ()
    answer: int | None = None


def _local_files(source: str) -> tuple[str, list[Path]] | None:
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
    return kinds.pop(), files


def _decode(raw: bytes, path: Path, line: int) -> str:
    """`raw` (starting at `line` of `path`) as UTF-8 text, the encoding `datasets` assumed as well."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        where = line + raw.count(b"\n", 0, err.start)
        raise DataError(f"data file {path} line {where}: not UTF-8 text ({err.reason}); save the file as UTF-8") from None


def _json_error(err: ValueError) -> str:
    """The parser's reason; a ValueError that is no JSONDecodeError is an integer past Python's digit limit."""
    return f"{err.msg}: column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)


def _json_record(value, origin: str) -> Record:
    if not isinstance(value, dict):
        raise DataError(f"{origin}: expected a JSON object (one row with named fields), got {type(value).__name__}")
    return Record(value, origin)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of `path`, a leading byte order mark dropped."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            text = _decode(raw, path, number)
            yield number, text.removeprefix("\ufeff") if number == 1 else text


def _json_rows(path: Path) -> Iterator[Record]:
    """JSON Lines, or one JSON array of objects: the two shapes `datasets` read, whatever the suffix.

    A file whose first character is `[` is an array (read whole, as `datasets` did); any other file is
    read a line at a time, so a bad line is reported with its number and nothing after it is parsed.
    """
    with path.open("rb") as f:
        is_array = f.read(64).removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"[")
    if is_array:
        try:
            rows = json.loads(_decode(path.read_bytes(), path, 1).removeprefix("\ufeff"))
        except ValueError as err:
            raise DataError(f"data file {path} line {getattr(err, 'lineno', 1)}: invalid JSON ({_json_error(err)})") from None
        for number, value in enumerate(rows, 1):
            yield _json_record(value, f"data file {path} row {number}")
        return
    for number, text in _lines(path):
        if not text.strip():
            continue
        try:
            value = json.loads(text.rstrip("\r\n"))
        except ValueError as err:
            raise DataError(
                f"data file {path} line {number}: invalid JSON ({_json_error(err)}); "
                "JSON Lines hold one JSON object per line (or the file is one JSON array of objects)"
            ) from None
        yield _json_record(value, f"data file {path} line {number}")


def _csv_rows(path: Path) -> Iterator[Record]:
    """Rows under the header line, cells as the text written there; an empty cell is a missing value.

    No type guessing (pandas, under `datasets`, turned "007" into 7 and "NA" into a missing value):
    prompts and responses are text, and a template renders a cell exactly as written. Python's csv
    module refuses cells over 131072 characters (its guard against an unclosed quote swallowing the
    rest of the file); such a file is reported, and .jsonl or .parquet carry longer texts.
    """
    reader = csv.reader(text for _, text in _lines(path))
    try:
        header = next((cells for cells in reader if cells), None)
        for cells in reader:
            origin = f"data file {path} line {reader.line_num}"
            if len(cells) > len(header):
                raise DataError(f"{origin}: {len(cells)} cells, but the header line names {len(header)} columns")
            if cells:
                yield Record(itertools.zip_longest(header, [cell if cell != "" else None for cell in cells]), origin)
    except csv.Error as err:
        raise DataError(f"data file {path} line {reader.line_num}: invalid CSV ({err})") from None


def _parquet_rows(path: Path) -> Iterator[Record]:
    """Rows batch by batch, read with pyarrow directly, so nothing is copied into the HF cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                number += 1
                yield Record(row, f"data file {path} row {number}")
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"data file {path}: not a readable Parquet file ({err})") from None


_READERS = {"json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows}


def _file_rows(kind: str, files: Iterable[Path]) -> Iterator[Record]:
    """The rows of every file in turn; a file without rows is an error (a truncated export, a wrong path)."""
    for path in files:
        empty = True
        for record in _READERS[kind](path) if path.stat().st_size else ():
            empty = False
            yield record
        if empty:
            raise DataError(f"data file {path} holds no rows; fill it or remove it from the data source")


def load_records(spec: DataSpec) -> list[Record]:
    """Rows of the configured source as dicts, in a stable order; reading stops after `limit` rows."""
    if spec.records is not None:
        rows: Iterable[Record] = (Record(r, f"data records[{i}]") for i, r in enumerate(spec.records))
    elif (local := _local_files(spec.source)) is not None:
        rows = _file_rows(*local)
    else:
        import datasets

        try:
            dataset = datasets.load_dataset(spec.source, spec.subset, split=spec.split)
        except Exception as err:  # datasets raises many types for an unreachable or unknown hub name
            raise FileNotFoundError(
                f"data source {spec.source!r} is neither a local file/folder nor a loadable hub dataset: {err}"
            ) from None
        rows = (Record(r, f"hub dataset {spec.source} ({spec.split}) row {i}") for i, r in enumerate(dataset, 1))
    return list(itertools.islice(rows, spec.limit))


def _template_fields(template: str, setting: str) -> list[str]:
    """Row fields a template reads; `{q}`, `{q.x}` and `{q[0]}` all read the field `q`."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise DataError(f"{setting} is not a valid str.format template: {err}") from None
    names = {re.split(r"[.\[]", name, maxsplit=1)[0] for _, name, _, _ in parsed if name is not None}
    if any(name == "" or name.isdecimal() for name in names):
        raise DataError(f"{setting} has a positional field ('{{}}' or '{{0}}'); name a row field, e.g. '{{question}}'")
    return sorted(names)


def _render(record: dict, origin: str, setting: str, needed: list[str], template: str | None) -> str:
    missing = [name for name in needed if record.get(name) is None]
    if missing:
        present = sorted(name for name, value in record.items() if value is not None)
        raise DataError(f"{origin}: {setting} needs fields {needed}, but the row has {present} (missing or null: {missing})")
    if template is None:
        return str(record[needed[0]])
    try:
        return template.format(**record)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{origin}: cannot render {setting}: {err}") from None


def _choices(record: dict, origin: str, spec: DataSpec) -> tuple[tuple[str, ...], int]:
    """(options, index of the right one) of a multiple-choice row, checked: 2-16 non-empty strings and
    an integer index among them."""
    options, answer = record.get(spec.choices_field), record.get(spec.answer_field)
    if not isinstance(options, list) or not 2 <= len(options) <= MAX_CHOICES or not all(isinstance(o, str) and o.strip() for o in options):
        raise DataError(f"{origin}: field {spec.choices_field!r} must be a list of 2 to {MAX_CHOICES} non-empty option texts, got {str(options)[:80]}")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
        raise DataError(f"{origin}: field {spec.answer_field!r} must be the index (0 to {len(options) - 1}) of the right option, got {answer!r}")
    return tuple(options), answer


def to_examples(records: Sequence[dict], spec: DataSpec) -> list[Example]:
    """Map records through the templates; a missing field is an error naming the row, the fields the
    template needs and the fields the row has. Rows from `load_records` are named by file and line.
    With `choices_field`, the response is the right option and the options travel with the example."""
    roles = [("prompt", spec.prompt_field, spec.prompt_template)]
    if spec.choices_field is None:
        roles.append(("response", spec.response_field, spec.response_template))
    sides = []
    for role, field, template in roles:
        setting = f"{role}_template {template!r}" if template else f"{role}_field {field!r}"
        sides.append((setting, _template_fields(template, setting) if template else [field], template or None))
    examples = []
    for i, record in enumerate(records):
        origin = getattr(record, "origin", f"data records[{i}]")
        texts = [_render(record, origin, *side) for side in sides]
        if spec.choices_field is None:
            examples.append(Example(prompt=texts[0], response=texts[1]))
        else:
            options, answer = _choices(record, origin, spec)
            examples.append(Example(prompt=texts[0], response=options[answer], choices=options, answer=answer))
    return examples


def data_fingerprint(examples: Sequence[Example]) -> str:
    """sha256 over the examples in order (their options too, for multiple-choice data)."""
    digest = hashlib.sha256()
    for ex in examples:
        fields = [ex.prompt, ex.response] + ([list(ex.choices), ex.answer] if ex.choices else [])
        digest.update(json.dumps(fields, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def validation_bucket(example: Example, seed: int = 0) -> float:
    """A number in [0, 1) fixed by the example's content: it is validation when below val_fraction.
    Why by content: an example keeps its side whatever else is in the data (shards that arrive later,
    a replay sample), so a held-out item is never trained on in any later update."""
    h = hashlib.sha256(f"{seed}\x00{example.prompt}\x00{example.response}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_examples(examples: Sequence[Example], val_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Deterministic content-hash split; at least one validation example when val_fraction > 0."""
    buckets = [validation_bucket(ex, seed) for ex in examples]
    train = [ex for ex, b in zip(examples, buckets) if b >= val_fraction]
    val = [ex for ex, b in zip(examples, buckets) if b < val_fraction]
    if val_fraction > 0 and not val and len(train) > 1:
        lowest = min(range(len(train)), key=lambda i: validation_bucket(train[i], seed))
        val = [train.pop(lowest)]
    return train, val


def validation_items(data: DataSpec, limit: int | None = None) -> list[dict]:
    """The validation split the trainer holds out of `data` ({prompt, response} rows; a multiple-choice
    row also carries `choices` and `answer`, so a choice domain's scorer can rank its options); [] without one."""
    if data.val_fraction <= 0:
        return []
    _, val = split_examples(to_examples(load_records(data), data), data.val_fraction, data.seed)
    return [{"prompt": ex.prompt, "response": ex.response, **({"choices": list(ex.choices), "answer": ex.answer} if ex.choices else {})}
            for ex in val][:limit]


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

    Before tokenising, each side is cut to CHARS_PER_TOKEN * max_length characters: the prompt's end
    and the response's start, the parts truncation keeps. Tokenising costs time and memory in the
    length of the text (a 50 MB line peaked at 6.8 GB), yet at most `max_length` tokens of a side
    survive. 32 characters a token is 8x the ~4 of English BPE text and above the longest tokens of
    common vocabularies, so the cut lies far beyond the tokens kept and the ids are those of the
    whole text; a side within the bound is tokenised as it is.
    """
    budget = CHARS_PER_TOKEN * spec.max_length
    prompt_ids = encode_prompt(tokenizer, example.prompt[-budget:], spec.use_chat_template, spec.system_prompt)
    response_ids = tokenizer(example.response[:budget], add_special_tokens=False)["input_ids"]
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


def encode_with_choices(example: Example, tokenizer, spec: DataSpec) -> dict:
    """`encode_example`, plus for a multiple-choice example `choice`: the prompt's ids once, each
    option's ids (EOS included, as the scorer reads it) and the answer, for `collate_choices`.

    Each option is encoded as the response of its own example, so it is cut exactly as the scorer's
    sequence would be; the shared prompt is the shortest of the options' prompt ids (all are suffixes
    of the whole prompt, cut from the left)."""
    encoded = encode_example(example, tokenizer, spec)
    if example.choices:
        prompts, options = [], []
        for option in example.choices:
            ids, labels = (one := encode_example(Example(example.prompt, option), tokenizer, spec))["input_ids"], one["labels"]
            cut = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
            if cut == 0:
                raise DataError(f"a multiple-choice example has an empty prompt (options {list(example.choices)[:2]}...); give every question a prompt")
            prompts.append(ids[:cut])
            options.append(ids[cut:])
        encoded["choice"] = {"prompt": min(prompts, key=len), "options": options, "answer": example.answer}
    return encoded


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
        train=[encode_with_choices(ex, tokenizer, spec) for ex in train],
        val=[encode_with_choices(ex, tokenizer, spec) for ex in val],
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


def collate_choices(items: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A batch of multiple-choice examples, one packed row each: the prompt once, then every option.

    Why packed: the options of a question share its prompt (for law ~370 of ~410 tokens), so K
    separate rows would run the prompt K times through every layer; packed, each option attends to the
    prompt and to itself only (a block mask), with positions restarting after the prompt, so each
    option sees exactly the sequence the scorer scores, at a third of the cost for 4 options.

    Returns input_ids (B, T) right-padded; attention_mask (B, T) 1 on real tokens; choice_mask
    (B, 1, T, T) bool, True = may attend; position_ids (B, T); predict (N,) flat positions in B*T whose
    next-token distribution scores an option token; target (N,) that token; owner (N,) =
    example x MAX_CHOICES + option number; answer (B,); index (B,) the examples' ids (prefix-cache keys).
    """
    packed = []
    for item in items:
        if "choice" not in item:
            raise ValueError("the choice objective needs multiple-choice examples; set data.choices_field")
        choice = item["choice"]
        ids, segment, position = list(choice["prompt"]), [0] * len(choice["prompt"]), list(range(len(choice["prompt"])))
        for number, option in enumerate(choice["options"], 1):
            ids += option
            segment += [number] * len(option)
            position += range(len(choice["prompt"]), len(choice["prompt"]) + len(option))
        packed.append((ids, segment, position))
    width = max(len(ids) for ids, _, _ in packed)
    input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    segments = torch.full((len(items), width), -1, dtype=torch.long)
    positions = torch.zeros((len(items), width), dtype=torch.long)
    predict, target, owner = [], [], []
    for row, ((ids, segment, position), item) in enumerate(zip(packed, items)):
        n, prompt = len(ids), len(item["choice"]["prompt"])
        input_ids[row, :n], segments[row, :n], positions[row, :n] = torch.tensor(ids), torch.tensor(segment), torch.tensor(position)
        for q in range(prompt, n):
            first = segment[q - 1] != segment[q]
            predict.append(row * width + (prompt - 1 if first else q - 1))
            target.append(ids[q])
            owner.append(row * MAX_CHOICES + segment[q] - 1)
    real = segments >= 0
    same = (segments.unsqueeze(2) == segments.unsqueeze(1)) | (segments == 0).unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = same & causal & real.unsqueeze(1) & real.unsqueeze(2)
    allowed[:, :, 0] |= ~real  # a padding query attends to the first token: no all-masked row (NaN in SDPA)
    return {
        "input_ids": input_ids, "attention_mask": real.long(), "choice_mask": allowed.unsqueeze(1), "position_ids": positions,
        "predict": torch.tensor(predict, dtype=torch.long), "target": torch.tensor(target, dtype=torch.long),
        "owner": torch.tensor(owner, dtype=torch.long),
        "answer": torch.tensor([item["choice"]["answer"] for item in items], dtype=torch.long),
        "index": torch.tensor([item.get("index", -1) for item in items], dtype=torch.long),
    }
