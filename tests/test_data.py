import json

import pytest

from ccoe.config import DataSpec
from ccoe.data import IGNORE_INDEX, Example, collate, data_fingerprint, encode_example, load_records, prepare_data, split_examples, to_examples
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
    with pytest.raises(ValueError, match="data row 2 is missing required field 'answer'"):
        to_examples(broken, spec)
    with pytest.raises(ValueError, match="missing required field 'prompt'"):
        to_examples(ROWS, DataSpec(records=ROWS))


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
