"""Continuous-batching engines side by side: the same requests through `ccoe.serving.ContinuousBatcher`.

Engines, all on the real SmolLM2-135M-Instruct (offline; the experts and adapters are untrained, which changes no cost):
- (a) the plain backbone (every request on it);
- (g) CCoE, four `top` k = L/4 experts, grouped layers (one call per expert layer, `ccoe.grouped`);
- (c) CCoE, the same experts, one call per expert sub-batch (`grouped_layers=False`);
- (d) PEFT multi-LoRA: four rank-16 adapters on every linear layer, rows routed with `adapter_names`,
  behind the same batcher (`PeftEngine` below gives it the interface the batcher calls).

Requests: the first `--requests` domain queries of benchmarks/routing/heldout.jsonl in the chat
template, round-robin over the four experts/adapters,
`--new-tokens` greedy tokens each, submitted at once with `max_batch` = the concurrency level, so the
running batch stays full and rows join as others finish (continuous batching with mixed experts).
The experts are copies of the backbone's layers and the adapters start with B = 0 (PEFT's default
init), so every engine generates the same tokens and tokens/s compare exactly. Engines alternate
within each repetition; figures are medians.

    python benchmarks/bench_engines.py --out benchmarks/results/engines.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_runtime import K_QUARTER  # noqa: E402
from benchmarks.bench_serving import queries  # noqa: E402
from benchmarks.machine import cpu_description  # noqa: E402
from ccoe.backbone import load_backbone  # noqa: E402
from ccoe.config import BackboneSpec, LayerSelection  # noqa: E402
from ccoe.data import encode_prompt  # noqa: E402
from ccoe.expert import create_expert  # noqa: E402
from ccoe.model import CCoEModel  # noqa: E402
from ccoe.serving.batching import ContinuousBatcher, Finished, SamplingParams  # noqa: E402

EXPERTS = 4
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ENGINES = {"backbone": "(a) plain backbone", "ccoe-grouped": "(g) CCoE, grouped layers",
           "ccoe-sub-batches": "(c) CCoE, a call per expert sub-batch", "peft": "(d) PEFT multi-LoRA (adapter_names)"}


class PeftEngine:
    """A PEFT multi-LoRA model with the interface `ContinuousBatcher` calls: `experts`, `backbone`, `lm`
    and `__call__(ids, mask, expert_ids=..., past_key_values=..., position_ids=..., logits_to_keep=...)`.
    Route None runs the base model (`__base__`)."""

    def __init__(self, peft_model, backbone, adapters: list[str]):
        self.peft, self.backbone, self.lm = peft_model, backbone, peft_model
        self.experts = dict.fromkeys(adapters)

    def __call__(self, ids, mask, *, expert_ids, past_key_values, position_ids, logits_to_keep, share_equal_rows=False):
        names = [name if name is not None else "__base__" for name in expert_ids]
        return self.peft(input_ids=ids, attention_mask=mask, past_key_values=past_key_values, position_ids=position_ids,
                         use_cache=True, adapter_names=names, logits_to_keep=logits_to_keep)


def build(backbone_spec: BackboneSpec = BackboneSpec(source="smollm2-135m-instruct"), k: int = K_QUARTER):
    """The four engines over one backbone; CCoE experts are untrained copies of its top `k` layers."""
    from peft import LoraConfig, get_peft_model

    backbone = load_backbone(backbone_spec)
    grouped, plain = CCoEModel(backbone, grouped_layers=True), CCoEModel(backbone)
    for i in range(EXPERTS):
        expert = create_expert(backbone, f"e{i}", "d", LayerSelection(strategy="top", k=k))
        grouped.push_expert(expert)
        plain.push_expert(expert)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, lora_dropout=0.0)
    peft = get_peft_model(copy.deepcopy(backbone.model), config, adapter_name="e0")
    for i in range(1, EXPERTS):
        peft.add_adapter(f"e{i}", config)
    peft.eval()
    return {"backbone": plain, "ccoe-grouped": grouped, "ccoe-sub-batches": plain,
            "peft": PeftEngine(peft, backbone, [f"e{i}" for i in range(EXPERTS)])}


def requests(tokenizer, count: int) -> list[tuple[list[int], str]]:
    """(prompt ids, expert) per request: the held-out routing queries as chat prompts, experts round-robin."""
    prompts = queries()[:count]
    return [(encode_prompt(tokenizer, q), f"e{n % EXPERTS}") for n, q in enumerate(prompts)]


def run(engine, name: str, reqs, concurrency: int, new_tokens: int) -> dict:
    """Submit every request at once to a batcher of `max_batch` = concurrency: tokens/s, the median gap
    between a request's streamed deltas, and each request's text (engines must agree on it)."""
    batcher = ContinuousBatcher(engine, engine.backbone.tokenizer, max_batch=concurrency, max_queue=len(reqs) + 1).start()
    done, tokens, gaps, texts = threading.Semaphore(0), [0], [], [""] * len(reqs)
    lock = threading.Lock()

    def emitter(index: int):
        last = [None]

        def emit(event):
            now = time.perf_counter()
            if isinstance(event, Finished):
                with lock:
                    tokens[0] += event.completion_tokens
                done.release()
                return
            with lock:
                texts[index] += event.text
                if last[0] is not None:
                    gaps.append(now - last[0])
            last[0] = now
        return emit

    params = SamplingParams(max_new_tokens=new_tokens)
    start = time.perf_counter()
    for index, (ids, route) in enumerate(reqs):
        batcher.submit(ids, None if name == "backbone" else route, params, emitter(index))
    for _ in reqs:
        done.acquire()
    wall = time.perf_counter() - start
    batcher.close()
    return {"tokens_s": tokens[0] / wall, "tokens": tokens[0], "itl_p50": statistics.median(gaps) if gaps else float("nan"),
            "texts": texts}


def measure(concurrency: list[int], count: int, new_tokens: int, reps: int) -> dict:
    engines = build()
    reqs = requests(engines["backbone"].backbone.tokenizer, count)
    for name, engine in engines.items():
        run(engine, name, reqs[:4], 4, 4)  # warm-up (and the grouped engine's weight stacks)
    results = {c: {name: [] for name in engines} for c in concurrency}
    for _ in range(reps):
        for c in concurrency:
            for name, engine in engines.items():
                r = run(engine, name, reqs, c, new_tokens)
                results[c][name].append(r)
                print(f"  concurrency {c} {name}: {r['tokens_s']:.1f} tokens/s ({r['tokens']} tokens)", file=sys.stderr, flush=True)
    stack_bytes = engines["ccoe-grouped"].stack_bytes()
    return {"results": results, "stack_bytes": stack_bytes}


def report(measured: dict, count: int, new_tokens: int, reps: int) -> str:
    lines = ["## Engines: continuous batching with mixed experts vs the backbone and PEFT multi-LoRA (cpu)", "",
             f"Measured on {cpu_description()}. SmolLM2-135M-Instruct, {EXPERTS} experts (`top` k = {K_QUARTER}) / {EXPERTS} LoRA "
             f"adapters (r=16, all linear layers); {count} chat requests (held-out routing queries), round-robin over them, "
             f"{new_tokens} greedy tokens each, all submitted at once to `ContinuousBatcher` with max_batch = concurrency "
             f"(`benchmarks/bench_engines.py`). Every engine generates the same tokens. Median of {reps} alternating runs.", "",
             "| concurrency | engine | tokens/s | ITL p50 (ms) | vs backbone | vs PEFT |", "|---|---|---|---|---|---|"]
    ratios = {}
    for c, by_engine in measured["results"].items():
        med = {name: statistics.median(r["tokens_s"] for r in runs) for name, runs in by_engine.items()}
        itl = {name: statistics.median(r["itl_p50"] for r in runs) for name, runs in by_engine.items()}
        for name, label in ENGINES.items():
            lines.append(f"| {c} | {label} | {med[name]:.1f} | {itl[name] * 1e3:.0f} | {med[name] / med['backbone']:.2f}x | "
                         f"{med[name] / med['peft']:.2f}x |")
        ratios[c] = (med["ccoe-grouped"] / med["backbone"], med["ccoe-grouped"] / med["peft"])
    lines += ["", "| goal (grouped CCoE) | " + " | ".join(f"concurrency {c}" for c in ratios) + " |",
              "|---|" + "---|" * len(ratios)]
    lines.append("| >= 0.90x the backbone's tokens/s | " + " | ".join(
        f"{a:.2f}x {'yes' if a >= 0.9 else 'NO'}" for a, _ in ratios.values()) + " |")
    lines.append("| >= 1.76x PEFT multi-LoRA | " + " | ".join(
        f"{b:.2f}x {'yes' if b >= 1.76 else 'NO'}" for _, b in ratios.values()) + " |")
    lines += ["", f"Weight stacks of the grouped engine: {measured['stack_bytes'] / 2**20:,.0f} MiB "
                  f"({EXPERTS} experts + the backbone's layers at their {K_QUARTER} depths).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/engines.md"))
    p.add_argument("--concurrency", default="4,16")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    text = report(measure(concurrency, args.requests, args.new_tokens, args.reps), args.requests, args.new_tokens, args.reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
