"""Continuous batching: requests that join a running mixed-expert batch get exactly what they would alone."""

import queue
import threading
import time

import pytest
import torch

from ccoe.backbone import load_backbone
from ccoe.serving.batching import ContinuousBatcher, Finished, QueueFull, SamplingParams
from ccoe.config import BackboneSpec, ExpertSpec
from ccoe.expert import expert_from_spec
from ccoe.generation import generate
from ccoe.model import CCoEModel
from tests.conftest import perturb, save_tiny_checkpoint


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def served(request, tmp_path_factory):
    """A tiny llama, and a tiny Gemma 3 whose sliding layers (window 4) see less than the prompts and
    answers, each with a word-level tokenizer and two experts (math: top layer; law: layers 1-2)."""
    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("bb") / "tiny", model_type=request.param)
    backbone = load_backbone(BackboneSpec(source=str(folder)))
    model = CCoEModel(backbone)
    for seed, spec in enumerate([{"name": "math", "domain": "math", "layers": {"strategy": "top", "k": 1}},
                                 {"name": "law", "domain": "law", "layers": {"strategy": "explicit", "indices": [1, 2]}}]):
        model.push_expert(perturb(expert_from_spec(backbone, ExpertSpec.model_validate(spec)), scale=0.3, seed=seed))
    return model, backbone.tokenizer


class Collector:
    """Gathers one request's events; `wait` returns (text, Finished)."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()

    def __call__(self, event):
        self.events.put(event)

    def wait(self, timeout_s: float = 30) -> tuple[str, Finished]:
        text = []
        while True:
            event = self.events.get(timeout=timeout_s)
            if isinstance(event, Finished):
                return "".join(text), event
            text.append(event.text)


def alone(model, tokenizer, prompt_ids, route, max_new_tokens) -> list[int]:
    """Greedy tokens of one request run by itself through `generate` (stopping at EOS)."""
    ids = torch.tensor([prompt_ids])
    out = generate(model, ids, expert=route, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)[0].tolist()
    return out[:out.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in out else out


PROMPTS = [("what is the sum of two and three", "math"), ("court patient dose", "law"), ("write python function", None),
           ("sql query equals answer plus minus four five six seven", "math"), ("law", "law")]


@pytest.mark.parametrize("grouped", [False, True], ids=["sub-batches", "grouped-layers"])
def test_requests_joining_a_running_batch_get_what_they_would_alone(served, grouped):
    model, tokenizer = served
    model.grouped_layers = grouped
    model._stacks.clear()
    engine = ContinuousBatcher(model, tokenizer, max_batch=8, max_prefill_tokens=8).start()
    try:
        requests = [(tokenizer(prompt)["input_ids"], route, 6 + 3 * n) for n, (prompt, route) in enumerate(PROMPTS)]
        expected = [tokenizer.decode(alone(model, tokenizer, ids, route, budget), skip_special_tokens=True)
                    for ids, route, budget in requests]
        collectors = []
        for ids, route, budget in requests:
            collectors.append(Collector())
            engine.submit(ids, route, SamplingParams(max_new_tokens=budget), collectors[-1])
            # later requests join a batch that is already decoding; back to back with grouped layers, so that
            # decode steps surely mix experts (a tiny model may finish a request in 20 ms)
            time.sleep(0.0 if grouped else 0.02)
        results = [c.wait() for c in collectors]
    finally:
        engine.close()
        model.grouped_layers = False
    assert [text for text, _ in results] == expected
    assert (model.stack_bytes() > 0) == grouped  # mixed steps ran grouped layers exactly when asked
    assert all(f.reason in ("length", "stop") and f.error is None for _, f in results)
    assert engine.stats.prefills >= 2 and engine.stats.finished == len(PROMPTS)
    assert engine.stats.active == 0 and engine._cache is None


def test_a_stop_string_ends_the_text_before_it(served):
    model, tokenizer = served
    ids = tokenizer("what is the sum")["input_ids"]
    full = tokenizer.decode(alone(model, tokenizer, ids, "math", 12), skip_special_tokens=True)
    words = full.split()
    assert len(words) >= 3, full
    stop = " ".join(words[1:3])
    engine = ContinuousBatcher(model, tokenizer).start()
    try:
        collector = Collector()
        engine.submit(ids, "math", SamplingParams(max_new_tokens=12, stop=(stop,)), collector)
        text, finished = collector.wait()
    finally:
        engine.close()
    assert finished.reason == "stop" and text == full[:full.index(stop)]


def test_seeded_sampling_repeats_and_bad_requests_are_refused(served):
    model, tokenizer = served
    engine = ContinuousBatcher(model, tokenizer, max_queue=1).start()
    ids = tokenizer("what is the sum")["input_ids"]
    try:
        runs = []
        for _ in range(2):
            collector = Collector()
            engine.submit(ids, "law", SamplingParams(max_new_tokens=10, temperature=1.0, seed=7), collector)
            runs.append(collector.wait())
        assert runs[0] == runs[1] and runs[0][1].completion_tokens >= 1
        with pytest.raises(ValueError, match="exceeds the context"):
            engine.submit(ids, None, SamplingParams(max_new_tokens=1000), Collector())
        with pytest.raises(KeyError, match="no expert 'medical'"):
            engine.submit(ids, "medical", SamplingParams(), Collector())
        with pytest.raises(ValueError, match="temperature"):
            SamplingParams(temperature=-1)
    finally:
        engine.close()
    blocked = ContinuousBatcher(model, tokenizer, max_queue=1)  # not started: nothing leaves the queue
    blocked.submit(ids, None, SamplingParams(), Collector())
    with pytest.raises(QueueFull):
        blocked.submit(ids, None, SamplingParams(), Collector())


def test_exclusive_work_runs_between_steps_and_cancel_ends_a_request(served):
    model, tokenizer = served
    engine = ContinuousBatcher(model, tokenizer)  # started after the submissions: the queue order is known
    ids = tokenizer("law court")["input_ids"]
    cancelled, kept = Collector(), Collector()
    engine.submit(ids, "law", SamplingParams(max_new_tokens=4), cancelled).cancel()
    engine.submit(ids, "math", SamplingParams(max_new_tokens=4), kept)
    seen = engine.run_exclusive(lambda: (threading.current_thread().name, sorted(engine.in_use(), key=str)))
    engine.start()
    try:
        assert seen.result(timeout=30) == ("ccoe-batcher", ["law", "math"])
        assert cancelled.wait() == ("", Finished("cancelled", len(ids), 0))
        assert kept.wait()[1].reason in ("length", "stop")
    finally:
        engine.close()


class CallLog:
    """The model behind a batcher, logging each forward as (rows, new tokens per row)."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, ids, *args, **kwargs):
        self.calls.append(tuple(ids.shape))
        return self.model(ids, *args, **kwargs)


def test_a_long_prompt_is_prefilled_in_chunks_between_the_running_rows_decode_steps(served):
    model, tokenizer = served
    short = tokenizer("law court")["input_ids"]
    long = tokenizer("sql query equals answer plus minus four five six seven what is the sum of two")["input_ids"]
    assert len(long) > 12 and len(alone(model, tokenizer, short, "law", 12)) == 12  # the running row outlives the prefill
    logged = CallLog(model)
    engine = ContinuousBatcher(logged, tokenizer, max_batch=4, max_prefill_tokens=4)  # started after both are queued
    running, newcomer = Collector(), Collector()
    engine.submit(short, "law", SamplingParams(max_new_tokens=12), running)
    engine.submit(long, "math", SamplingParams(max_new_tokens=6), newcomer)  # over the budget: chunked
    engine.start()
    try:
        texts = [running.wait()[0], newcomer.wait()[0]]
    finally:
        engine.close()
    expected = [tokenizer.decode(alone(model, tokenizer, ids, route, n), skip_special_tokens=True)
                for ids, route, n in ((short, "law", 12), (long, "math", 6))]
    assert texts == expected
    chunks = -(-len(long) // 4)
    assert engine.stats.prefill_chunks == 1 + chunks and engine.stats.prefills == 2
    # the short prompt's prefill, then the long one's chunks, each after one decode step of the running row
    assert logged.calls[0] == (1, len(short))
    assert logged.calls[1:1 + 2 * chunks] == [(1, 1), (1, 4)] * (chunks - 1) + [(1, 1), (1, len(long) - 4 * (chunks - 1))]
