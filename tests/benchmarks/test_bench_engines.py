"""The engine benchmark's four engines generate the same text behind the same batcher (benchmarks/bench_engines.py)."""

import torch

from benchmarks.bench_engines import EXPERTS, build, run
from benchmarks.bench_runtime import GEMMA3_270M, k_quarter, spec
from ccoe.config import BackboneSpec

TINY = BackboneSpec(source="config", tokenizer="smollm2-135m-instruct", config={
    "model_type": "llama", "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True,
    "bos_token_id": 1, "eos_token_id": 2})


def test_every_engine_streams_the_same_text_with_mixed_experts_in_the_batch():
    torch.manual_seed(0)
    engines = build(TINY, k=2)
    tokenizer = engines["backbone"].backbone.tokenizer
    reqs = [(tokenizer(f"question number {i}")["input_ids"], f"e{i % EXPERTS}") for i in range(6)]
    with torch.no_grad():
        results = {name: run(engine, name, reqs, concurrency=3, new_tokens=5) for name, engine in engines.items()}
    texts = results["backbone"]["texts"]
    assert all(texts) and results["backbone"]["tokens"] == 6 * 5
    for name, result in results.items():
        assert result["texts"] == texts, name
        assert result["tokens"] == results["backbone"]["tokens"], name
    assert engines["ccoe-grouped"].stack_bytes() > 0  # the grouped engine did run grouped layers


def test_gemma_shapes_are_a_supported_backbone_with_experts_on_its_top_quarter():
    backbone = spec("float32", "gemma3-270m")
    assert backbone.config["model_type"] == "gemma3_text" and backbone.config["num_hidden_layers"] == 18
    assert k_quarter("gemma3-270m") == 4 and k_quarter("smollm2-135m") == 8
    assert GEMMA3_270M["layer_types"].count("full_attention") == 3
