"""Training-step benchmark: CCoE expert vs PEFT LoRA vs full fine-tuning, same tokens per step.

SmolLM2-135M shapes, random weights, fp32 on CPU (or `--device cuda --dtype bfloat16`). Each method
runs in a fresh process: build, one warm-up step, then timed AdamW steps. Peak memory is the process's
peak RSS (CPU) or `torch.cuda.max_memory_allocated` (GPU), also shown above the resident weights.
Every method computes the LM head only at supervised (response) positions, so the comparison is
about which layers need autograd, not about the loss.

    python benchmarks/bench_training.py --out benchmarks/results/training.md
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import cpu_description  # noqa: E402
from benchmarks.bench_runtime import K_QUARTER, SMOLLM2_135M, rss_bytes, spec  # noqa: E402
from ccoe.backbone import load_backbone  # noqa: E402
from ccoe.config import LayerSelection  # noqa: E402
from ccoe.data import IGNORE_INDEX  # noqa: E402
from ccoe.expert import create_expert  # noqa: E402
from ccoe.model import CCoEModel  # noqa: E402
from ccoe.training import PrefixCache, expert_lm_loss  # noqa: E402

METHODS = ["expert-top", "expert-top-cached-prefix", "expert-global", "lora-r16", "full-finetune"]


def _batch(batch: int, seq: int, device) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (batch, seq), generator=generator)
    labels = ids.clone()
    labels[:, : seq // 2] = IGNORE_INDEX  # prompt half unsupervised, response half supervised
    return {k: v.to(device) for k, v in
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "index": torch.arange(batch)}.items()}


def _hf_loss(lm, batch) -> torch.Tensor:
    hidden = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    return F.cross_entropy(lm.lm_head(hidden[:, :-1][keep]).float(), targets[keep])


def probe(method: str, device: str, dtype: str, batch: int, seq: int, steps: int) -> dict:
    device = torch.device(device)
    runtime_rss = rss_bytes()  # interpreter + torch, identical for every method
    backbone = load_backbone(spec(dtype), device=device)
    if method.startswith("expert"):
        model = CCoEModel(backbone)
        strategy = "global" if method == "expert-global" else "top"
        model.push_expert(create_expert(backbone, "e", "d", LayerSelection(strategy=strategy, k=K_QUARTER)))
        model.train()
        cache = PrefixCache(2**34) if method == "expert-top-cached-prefix" else None
        params = list(model.experts.parameters())
        loss_fn = lambda b: expert_lm_loss(model, b, "e", cache)[0]
    elif method == "lora-r16":
        from peft import LoraConfig, get_peft_model

        lm = backbone.model
        lm.requires_grad_(False)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        peft_model = get_peft_model(lm, LoraConfig(r=16, lora_alpha=32, target_modules=targets, lora_dropout=0.0))
        params = [p for p in peft_model.parameters() if p.requires_grad]
        loss_fn = lambda b: _hf_loss(peft_model.base_model.model, b)
    else:
        lm = backbone.model
        lm.requires_grad_(True)
        lm.train()
        params = list(lm.parameters())
        loss_fn = lambda b: _hf_loss(lm, b)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    data = _batch(batch, seq, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = loss_fn(data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # step 0 warms up (and fills the prefix cache)
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = growth = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        growth = peak - runtime_rss
    return {
        "method": method, "step_s": statistics.median(times), "tokens_per_s": batch * seq / statistics.median(times),
        "peak_bytes": peak, "peak_growth_bytes": growth, "trainable_params": sum(p.numel() for p in params),
    }


LAYERS = SMOLLM2_135M["num_hidden_layers"]


def _flops_per_token() -> tuple[float, float]:
    """Forward matmul FLOPs per token of one decoder layer and of the LM head (SmolLM2-135M shapes)."""
    h, i, v = SMOLLM2_135M["hidden_size"], SMOLLM2_135M["intermediate_size"], SMOLLM2_135M["vocab_size"]
    kv = h * SMOLLM2_135M["num_key_value_heads"] // SMOLLM2_135M["num_attention_heads"]
    return 2 * (2 * h * h + 2 * h * kv + 3 * h * i), 2 * h * v


def report(rows: list[dict], device: str, dtype: str, batch: int, seq: int, steps: int) -> str:
    full = next(r for r in rows if r["method"] == "full-finetune")
    lines = [
        f"## Training step: expert vs LoRA vs full fine-tune ({device}, {dtype})", "", f"Measured on {cpu_description()}.", "",
        f"SmolLM2-135M shapes, {batch} x {seq} tokens per step (half prompt, half supervised response), AdamW, median of "
        f"{steps} steps after a warm-up step, each method in a fresh process. Experts own k = L/4 = {K_QUARTER} layers.",
        "`expert-top-cached-prefix` reuses the frozen prefix's hidden states from an earlier epoch (`prefix_cache_mb`).", "",
        "| method | trainable params | step s | tokens/s | time vs full FT | peak RSS MiB | peak above runtime MiB | vs full FT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable_params'] / 1e6:.1f} M | {r['step_s']:.2f} | {r['tokens_per_s']:,.0f} | "
            f"{r['step_s'] / full['step_s']:.2f}x | {r['peak_bytes'] / 2**20:,.0f} | {r['peak_growth_bytes'] / 2**20:,.0f} | "
            f"{r['peak_growth_bytes'] / full['peak_growth_bytes']:.2f}x |"
        )
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for method in ("expert-top", "expert-top-cached-prefix", "expert-global"):
        r = next(x for x in rows if x["method"] == method)
        t, m = r["step_s"] / full["step_s"], r["peak_growth_bytes"] / full["peak_growth_bytes"]
        lines.append(f"| {method} step time <= 0.5x full FT | {t:.2f}x | {'yes' if t <= 0.5 else 'NO'} |")
        lines.append(f"| {method} peak memory <= 0.5x full FT | {m:.2f}x | {'yes' if m <= 0.5 else 'NO'} |")
    layer, head = _flops_per_token()
    top = (LAYERS - K_QUARTER) * layer + 3 * K_QUARTER * layer + 2 * head / 2
    fft = 3 * LAYERS * layer + 3 * head / 2
    runtime_mib = statistics.median(r["peak_bytes"] - r["peak_growth_bytes"] for r in rows) / 2**20
    measured = next(r for r in rows if r["method"] == "expert-top")["step_s"] / full["step_s"]
    lines += [
        "", "Memory: on CPU, \"peak above runtime\" is the peak RSS minus the RSS after importing torch and transformers",
        f"(~{runtime_mib:,.0f} MiB, the same for every method), so it counts weights, gradients, optimizer state and",
        "activations; the goal uses it. On GPU both columns are `torch.cuda.max_memory_allocated`.", "",
        "Where the time goes: counting matmul FLOPs per token (forward 1x, backward 2x; LM head on the supervised half),",
        f"an `expert-top` step is {top / fft:.2f}x a full fine-tune step, because the frozen prefix ({LAYERS - K_QUARTER} of {LAYERS} layers)",
        f"still runs forward; measured here: {measured:.2f}x (the full fine-tune also pays for weight gradients and AdamW",
        "over all 134.5 M parameters, which are memory-bound on CPU). The prefix cache removes the prefix forward in",
        "epochs after the first. The `global` expert's lowest layer is 1, so backpropagation runs through almost the",
        "whole stack: its saving is weight gradients and optimizer state, not activations, which is why it misses 0.5x.", "",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        print(json.dumps(probe(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/training.md"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    rows = []
    for method in METHODS:
        out = subprocess.run(
            [sys.executable, __file__, "--probe", method, args.device, args.dtype, str(args.batch), str(args.seq), str(args.steps)],
            check=True, capture_output=True, text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {rows[-1]}", file=sys.stderr)
    text = report(rows, args.device, args.dtype, args.batch, args.seq, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
