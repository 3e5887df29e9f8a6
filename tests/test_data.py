import json
import re

import pytest

from ccoe.config import DataSpec
from ccoe.data import (
    CHARS_PER_TOKEN, IGNORE_INDEX, DataError, Example, collate, data_fingerprint, encode_example, load_records, prepare_data,
    split_examples, to_examples,
)
from transformers import AutoTokenizer

ROWS = [{"question": f"what is {a} plus {b}", "answer": str(a + b), "id": i} for i, (a, b) in enumerate([(1, 2), (3, 4), (5, 6), (7, 8), (9, 1)])]


@pytest.fixture
def tokenizer(local_backbone_dir):
    return AutoTokenizer.from_pretrained(local_backbone_dir)


def test_local_files_in_every_format_give_the_same_records(tmp_path):
    import pandas as pd

    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    for name in ("d.jsonl", "d.csv", "d.parquet", "d.json"):
        rows = load_records(DataSpec(source=str(tmp_path / name)))
        assert [(str(r["question"]), str(r["answer"])) for r in rows] == [(r["question"], r["answer"]) for r in ROWS]
    assert len(load_records(DataSpec(source=str(tmp_path / "d.jsonl"), limit=2))) == 2


def test_templates_and_missing_fields():
    spec = DataSpec(records=ROWS, prompt_template="Q: {question}?", response_field="answer")
    assert to_examples(ROWS, spec)[1] == Example("Q: what is 3 plus 4?", "7")
    broken = ROWS[:2] + [{"question": "x"}]
    with pytest.raises(DataError) as err:
        to_examples(broken, spec)
    assert str(err.value) == "data records[2]: response_field 'answer' needs fields ['answer'], but the row has ['question'] (missing or null: ['answer'])"
    with pytest.raises(DataError) as err:
        to_examples(ROWS, DataSpec(records=ROWS))
    assert str(err.value) == "data records[0]: prompt_field 'prompt' needs fields ['prompt'], but the row has ['answer', 'id', 'question'] (missing or null: ['prompt'])"
    with pytest.raises(DataError) as err:
        to_examples(ROWS, DataSpec(records=ROWS, prompt_template="Q: {}"))
    assert str(err.value) == "prompt_template 'Q: {}' has a positional field ('{}' or '{0}'); name a row field, e.g. '{question}'"
    with pytest.raises(DataError) as err:
        to_examples(ROWS, DataSpec(records=ROWS, prompt_template="{question}", response_template="{answer:d}"))
    assert str(err.value) == "data records[0]: cannot render response_template '{answer:d}': Unknown format code 'd' for object of type 'str'"


def test_a_missing_field_lists_what_the_template_needs_and_what_the_row_has(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"question": "q", "context": None, "answer": "a"}) + "\n")
    spec = DataSpec(source=str(path), prompt_template="{context}: {question}", response_field="answer")
    with pytest.raises(DataError) as err:
        to_examples(load_records(spec), spec)
    assert str(err.value) == (
        f"data file {path} line 1: prompt_template '{{context}}: {{question}}' needs fields ['context', 'question'], "
        "but the row has ['answer', 'id', 'question'] (missing or null: ['context'])"
    )
    with pytest.raises(DataError) as err:
        to_examples(load_records(spec)[1:], spec)
    assert str(err.value).startswith(f"data file {path} line 2: prompt_template")
    assert str(err.value).endswith("but the row has ['answer', 'question'] (missing or null: ['context'])")


def test_split_is_deterministic_disjoint_and_stable():
    examples = [Example(f"p{i}", f"r{i}") for i in range(200)]
    train, val = split_examples(examples, 0.2)
    assert (train, val) == split_examples(examples, 0.2)
    assert not set(train) & set(val) and len(train) + len(val) == 200
    assert 20 <= len(val) <= 60
    more_train, more_val = split_examples(examples + [Example("new", "one")], 0.2)
    assert set(val) <= set(more_val) and set(train) <= set(more_train)
    assert len(split_examples(examples[:3], 0.01)[1]) == 1


def test_fingerprint_tracks_content_and_order():
    a = [Example("p", "r"), Example("q", "s")]
    assert data_fingerprint(a) == data_fingerprint(list(a))
    assert data_fingerprint(a) != data_fingerprint(a[::-1])
    assert data_fingerprint(a) != data_fingerprint([Example("p", "r"), Example("q", "t")])


def test_labels_cover_only_the_response(tokenizer):
    spec = DataSpec(records=ROWS, use_chat_template=False)
    enc = encode_example(Example("what is two plus three", "five"), tokenizer, spec)
    prompt_len = len(tokenizer("what is two plus three")["input_ids"])
    assert enc["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert enc["labels"][prompt_len:] == enc["input_ids"][prompt_len:] == tokenizer("five")["input_ids"] + [tokenizer.eos_token_id]


def test_truncation_keeps_the_end_of_the_prompt_and_the_response(tokenizer):
    spec = DataSpec(records=ROWS, use_chat_template=False, max_length=8)
    enc = encode_example(Example(" ".join(["two"] * 20) + " three", "four five"), tokenizer, spec)
    assert len(enc["input_ids"]) == 8
    assert enc["input_ids"][-3:] == tokenizer("four five")["input_ids"] + [tokenizer.eos_token_id]
    assert enc["input_ids"][-4] == tokenizer("three")["input_ids"][0]


def test_prepare_and_collate(tokenizer):
    rows = [{"prompt": f"what is {w}", "response": w} for w in "two three four five six seven eight nine ten".split()]
    prepared = prepare_data(DataSpec(records=rows, val_fraction=0.3), tokenizer)
    assert prepared.num_examples == 9 and len(prepared.train) + len(prepared.val) == 9 and prepared.val
    batch = collate(prepared.train[:3], pad_token_id=0)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="yielded no examples"):
        prepare_data(DataSpec(records=[]), tokenizer)


def test_unknown_source_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="neither a local file/folder nor a loadable hub dataset"):
        load_records(DataSpec(source="no-such-org/no-such-dataset"))
    with pytest.raises(ValueError, match="exactly one of"):
        DataSpec()


def test_an_empty_file_is_one_error_naming_it(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (tmp_path / "shards" / "b.jsonl").write_text("")
    (tmp_path / "header.csv").write_text("prompt,response\n")
    for name in ("e.jsonl", "e.json", "e.csv", "e.parquet"):
        (tmp_path / name).write_text("")
    for path in ["shards/b.jsonl", "header.csv", "e.jsonl", "e.json", "e.csv", "e.parquet"]:
        source = tmp_path / ("shards" if path.startswith("shards/") else path)
        with pytest.raises(DataError) as err:
            load_records(DataSpec(source=str(source)))
        assert str(err.value) == f"data file {tmp_path / path} holds no rows; fill it or remove it from the data source"


def test_invalid_data_names_the_file_the_line_and_the_parser_error(tmp_path):
    lines = tmp_path / "d.jsonl"
    lines.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"prompt": "a", "response: }\n' + json.dumps(ROWS[1]) + "\n")
    array = tmp_path / "d.json"
    array.write_text('[{"prompt": "a", "response": "b"},\n {"prompt": x}]')
    not_object = tmp_path / "n.jsonl"
    not_object.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    wide = tmp_path / "w.csv"
    wide.write_text("prompt,response\na,b\nc,d,e\n")
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    expected = {
        lines: f"data file {lines} line 3: invalid JSON (Unterminated string starting at: column 17); "
               "JSON Lines hold one JSON object per line (or the file is one JSON array of objects)",
        array: f"data file {array} line 2: invalid JSON (Expecting value: column 13)",
        not_object: f"data file {not_object} line 2: expected a JSON object (one row with named fields), got list",
        wide: f"data file {wide} line 3: 3 cells, but the header line names 2 columns",
        latin: f"data file {latin} line 2: not UTF-8 text (invalid continuation byte); save the file as UTF-8",
    }
    for path, message in expected.items():
        with pytest.raises(DataError) as err:
            load_records(DataSpec(source=str(path)))
        assert str(err.value) == message
        assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)
    broken = tmp_path / "b.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=re.escape(f"data file {broken}: not a readable Parquet file (")):
        load_records(DataSpec(source=str(broken)))


def test_csv_cells_are_text_as_written_and_an_empty_cell_is_missing(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,response,id\nwhat,007,NA\nwhy,,3.50\n")
    assert load_records(DataSpec(source=str(path))) == [
        {"prompt": "what", "response": "007", "id": "NA"}, {"prompt": "why", "response": None, "id": "3.50"},
    ]


def test_loading_local_files_writes_nothing_to_the_hf_datasets_cache(tmp_path, monkeypatch):
    import datasets
    import pandas as pd

    cache = tmp_path / "hf-datasets-cache"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        assert len(load_records(DataSpec(source=str(tmp_path / name)))) == len(ROWS)
    with pytest.raises(DataError):
        load_records(DataSpec(source=str(tmp_path / "bad.jsonl")))
    assert list(cache.rglob("*")) == []


class RecordingTokenizer:
    """The real tokenizer, recording the length of every text it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_huge_row_is_cut_before_tokenising_and_encodes_as_the_whole_row_would(tokenizer):
    spec = DataSpec(records=ROWS, use_chat_template=False, max_length=16)
    recording = RecordingTokenizer(tokenizer)
    enc = encode_example(Example("what is " * 100_000 + "two plus three", "five six seven " * 100_000), recording, spec)
    assert len(recording.lengths) == 2 and max(recording.lengths) <= CHARS_PER_TOKEN * 16
    prompt = tokenizer("is what is what is two plus three")["input_ids"]
    response = tokenizer("five six seven five six seven five six", add_special_tokens=False)["input_ids"]
    assert enc == {"input_ids": prompt + response, "labels": [IGNORE_INDEX] * 8 + response}


def test_a_normal_row_encodes_exactly_as_before(tokenizer):
    example = Example("what is the sum of two and three", "five")
    assert encode_example(example, tokenizer, DataSpec(records=ROWS, use_chat_template=False)) == {
        "input_ids": [3, 4, 5, 6, 7, 8, 9, 10, 12, 2], "labels": [IGNORE_INDEX] * 8 + [12, 2]}
    assert encode_example(example, tokenizer, DataSpec(records=ROWS, use_chat_template=False, max_length=8)) == {
        "input_ids": [5, 6, 7, 8, 9, 10, 12, 2], "labels": [IGNORE_INDEX] * 6 + [12, 2]}
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}answer{% endif %}")
    assert encode_example(example, tokenizer, DataSpec(records=ROWS, system_prompt="write sql query")) == {
        "input_ids": [1, 22, 25, 26, 1, 3, 4, 5, 6, 7, 8, 9, 10, 21, 12, 2], "labels": [IGNORE_INDEX] * 14 + [12, 2]}
    assert encode_example(example, tokenizer, DataSpec(records=ROWS, system_prompt="write sql query", max_length=10)) == {
        "input_ids": [4, 5, 6, 7, 8, 9, 10, 21, 12, 2], "labels": [IGNORE_INDEX] * 8 + [12, 2]}


MCQ = [{"question": f"which is {w}", "options": ["two", w, "ten"], "right": 1} for w in ("three", "four", "five", "six")]


def test_choice_rows_carry_their_options_and_the_response_is_the_right_one(tokenizer):
    spec = DataSpec(records=MCQ, prompt_field="question", choices_field="options", answer_field="right", val_fraction=0.0)
    examples = to_examples(MCQ, spec)
    assert examples[0] == Example("which is three", "three", ("two", "three", "ten"), 1)
    encoded = prepare_data(spec, tokenizer).train[0]
    choice = encoded["choice"]
    assert choice["answer"] == 1 and len(choice["options"]) == 3
    assert choice["prompt"] + choice["options"][1] == encoded["input_ids"]  # the right option is the gold row
    assert encoded["labels"] == [IGNORE_INDEX] * len(choice["prompt"]) + choice["options"][1]
    plain = [Example(e.prompt, e.response) for e in examples]
    assert data_fingerprint(examples) != data_fingerprint(plain)
    changed = MCQ[:1] + [{**MCQ[1], "options": ["two", "four", "nine"]}] + MCQ[2:]
    assert data_fingerprint(to_examples(changed, spec)) != data_fingerprint(examples)


@pytest.mark.parametrize(("row", "message"), [
    ({"question": "q", "options": ["a"], "right": 0}, "'options' must be a list of 2 to 16 non-empty option texts"),
    ({"question": "q", "options": "a b", "right": 0}, "'options' must be a list"),
    ({"question": "q", "options": ["a", ""], "right": 0}, r"'options' must be .* got \['a', ''\]"),
    ({"question": "q", "options": ["a", "b"], "right": 2}, r"'right' must be the index \(0 to 1\)"),
    ({"question": "q", "options": ["a", "b"], "right": True}, "'right' must be the index"),
    ({"question": "q", "options": ["a", "b"]}, "'right' must be the index .* got None"),
])
def test_a_bad_choice_row_is_one_error_naming_it(row, message):
    spec = DataSpec(records=[row], prompt_field="question", choices_field="options", answer_field="right")
    with pytest.raises(DataError, match=r"data records\[0\]: field " + message):
        to_examples([row], spec)
