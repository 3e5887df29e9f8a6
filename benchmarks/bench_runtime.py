"""Runtime benchmark: memory, expert switch latency and forward throughput of CCoE vs baselines.

Real SmolLM2-135M shapes (30 layers, hidden 576, vocab 49152; `--shapes gemma3-270m`: Gemma 3 270M's,
18 layers, hidden 640, vocab 262144) with random weights: speed and memory
do not depend on weight values, and this skips the GGUF de-quantization. Every figure is a median
over interleaved repetitions measured side by side in one run; ratios are what to read, since the
machines are noisy. Memory is measured in a fresh subprocess per configuration (process RSS after
building the models) plus exact parameter bytes.

    python benchmarks/bench_runtime.py --out benchmarks/results/runtime.md [--device cuda --dtype bfloat16] [--shapes gemma3-270m]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import cpu_description  # noqa: E402
from ccoe.backbone import load_backbone  # noqa: E402
from ccoe.config import BackboneSpec, LayerSelection  # noqa: E402
from ccoe.expert import create_expert  # noqa: E402
from ccoe.model import CCoEModel  # noqa: E402

SMOLLM2_135M = dict(
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
    rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
)
# Gemma 3 270M (the second real backbone, `source: gemma3-270m`): 18 layers, 5:1 sliding:full attention,
# a 262k-token vocabulary whose tied embedding is 168M of its 268M parameters.
GEMMA3_270M = dict(
    model_type="gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
    num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, max_position_embeddings=32768,
    rms_norm_eps=1e-6, sliding_window=512, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
    layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
    rope_parameters={"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                     "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
    bos_token_id=2, eos_token_id=1, pad_token_id=0,
)
SHAPES = {"smollm2-135m": SMOLLM2_135M, "gemma3-270m": GEMMA3_270M}


def spec(dtype: str = "float32", shapes: str = "smollm2-135m") -> BackboneSpec:
    """Real shapes of a supported backbone (`SHAPES`) with random weights."""
    return BackboneSpec(source="config", config=SHAPES[shapes], dtype=dtype)


def k_quarter(shapes: str) -> int:
    """k = L/4 experts' layer count for these shapes (Gemma 3 270M: 4 of 18, as configs/demo-gemma.yaml)."""
    return round(SHAPES[shapes]["num_hidden_layers"] / 4)


K_QUARTER = k_quarter("smollm2-135m")


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(kind: str, n: int, k: int, shapes: str = "smollm2-135m") -> dict:
    """Run in a fresh process: build the configuration, report parameter bytes and RSS growth."""
    torch.set_num_threads(1)
    start = rss_bytes()
    if kind == "ccoe":
        model = CCoEModel(load_backbone(spec(shapes=shapes)))
        for i in range(n):
            model.push_expert(create_expert(model.backbone, f"e{i}", "d", LayerSelection(strategy="top", k=k)))
        param_bytes = sum(model.parameter_bytes().values())
        keep = [model]
    elif kind == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        config = LoraConfig(r=16, lora_alpha=32, target_modules=targets, lora_dropout=0.0)
        model = get_peft_model(load_backbone(spec(shapes=shapes)).model, config, adapter_name="a0")
        for i in range(1, n):
            model.add_adapter(f"a{i}", config)
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        keep = [model]
    else:
        keep = [load_backbone(spec(shapes=shapes)).model for _ in range(n)]
        param_bytes = sum(sum(p.numel() * p.element_size() for p in m.parameters()) for m in keep)
    return {"param_bytes": param_bytes, "rss_bytes": rss_bytes() - start, "models": len(keep)}


def k_eighth(shapes: str) -> int:
    return round(SHAPES[shapes]["num_hidden_layers"] / 8)


def measure_memory(shapes: str = "smollm2-135m") -> list[dict]:
    rows = []
    configs = [("full", n, 0) for n in range(1, 6)]
    configs += [("ccoe", n, k) for k in (k_quarter(shapes), k_eighth(shapes)) for n in range(1, 6)]
    configs += [("lora", n, 0) for n in range(1, 6)]
    for kind, n, k in configs:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-probe", kind, str(n), str(k), shapes],
            check=True, capture_output=True, text=True,
        )
        rows.append({"kind": kind, "n": n, "k": k, **json.loads(out.stdout.strip().splitlines()[-1])})
        print(f"  memory {kind} n={n} k={k}: {rows[-1]}", file=sys.stderr)
    return rows


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure_throughput(device: torch.device, dtype: str, batch: int, seq: int, reps: int, shapes: str = "smollm2-135m") -> dict:
    model = CCoEModel(load_backbone(spec(dtype, shapes), device=device))
    k = k_quarter(shapes)
    for i in range(4):
        model.push_expert(create_expert(model.backbone, f"top{i}", "d", LayerSelection(strategy="top", k=k)))
        model.push_expert(create_expert(model.backbone, f"glob{i}", "d", LayerSelection(strategy="global", k=k)))
    ids = torch.randint(0, SHAPES[shapes]["vocab_size"], (batch, seq), device=device)
    per_row = lambda prefix: [f"{prefix}{r % 4}" for r in range(batch)]
    cases = {
        "backbone (transformers forward)": lambda: model.lm(ids),
        "backbone (ccoe loop, no expert)": lambda: model(ids),
        "one expert (top, k=L/4)": lambda: model(ids, expert="top0"),
        "one expert (global, k=L/4)": lambda: model(ids, expert="glob0"),
        "4-expert mixed batch (top, k=L/4)": lambda: model(ids, expert_ids=per_row("top")),
        "4-expert mixed batch (global, k=L/4)": lambda: model(ids, expert_ids=per_row("glob")),
    }
    times = {name: [] for name in cases}
    with torch.no_grad():
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(reps):
            for name, fn in cases.items():
                times[name].append(_timed(fn, device))
    tokens = batch * seq
    return {name: {"median_s": statistics.median(t), "tokens_per_s": tokens / statistics.median(t)} for name, t in times.items()}


def measure_switch(reps: int = 200, shapes: str = "smollm2-135m") -> dict:
    """Pointer switch (push/pop of a built expert) vs copying weights into the backbone layers."""
    model = CCoEModel(load_backbone(spec(shapes=shapes)))
    expert = create_expert(model.backbone, "e", "d", LayerSelection(strategy="top", k=k_quarter(shapes)))
    push, pop, copy_in = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.push_expert(expert)
        push.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.pop_expert("e")
        pop.append(time.perf_counter() - t0)
    with torch.no_grad():
        for _ in range(20):
            t0 = time.perf_counter()
            for i in expert.layer_indices:
                model.lm.model.layers[i].load_state_dict(expert.layer(i).state_dict())
            copy_in.append(time.perf_counter() - t0)
    return {"push_s": statistics.median(push), "pop_s": statistics.median(pop), "weight_copy_s": statistics.median(copy_in)}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def report(memory, throughput, switch, device, dtype, batch, seq, reps, shapes: str = "smollm2-135m") -> str:
    quarter, eighth = k_quarter(shapes), k_eighth(shapes)
    title = "" if shapes == "smollm2-135m" else f" on {shapes} shapes"
    lines = [
        f"## Runtime{title}: memory, switch latency, forward throughput ({device}, {dtype})", "", f"Measured on {cpu_description()}.", "",
        "### Memory: backbone + N experts vs N full models (fresh process each)", "",
        f"Experts use the `top` strategy; k = L/4 = {quarter} and k = L/8 = {eighth} layers. RSS is the growth of the",
        "process's resident memory while building the models (includes allocator slack).", "",
        "| N | N full models: params MiB | RSS MiB | CCoE k=L/4: params MiB | RSS MiB | saving | CCoE k=L/8: params MiB | RSS MiB | saving | PEFT N LoRA r16: params MiB | RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    index = {(r["kind"], r["n"], r["k"]): r for r in memory}
    for n in range(1, 6):
        full = index[("full", n, 0)]
        row = [str(n), _mib(full["param_bytes"]), _mib(full["rss_bytes"])]
        for k in (quarter, eighth):
            c = index[("ccoe", n, k)]
            row += [_mib(c["param_bytes"]), _mib(c["rss_bytes"]), f"{1 - c['param_bytes'] / full['param_bytes']:.1%}"]
        lora = index[("lora", n, 0)]
        row += [_mib(lora["param_bytes"]), _mib(lora["rss_bytes"])]
        lines.append("| " + " | ".join(row) + " |")
    five_full, five = index[("full", 5, 0)], index[("ccoe", 5, quarter)]
    lines += ["", f"With 5 experts at k = L/4 CCoE holds {1 - five['param_bytes'] / five_full['param_bytes']:.1%} fewer parameter bytes "
              f"than 5 full models (RSS: {1 - five['rss_bytes'] / five_full['rss_bytes']:.1%}); the paper reports 61.3% on its setup.",
              "LoRA adapters are far smaller than layer experts (that is their point); what CCoE buys with its bytes is",
              "adapter-free inference (see the inference section) and whole-layer capacity per domain.", ""]

    base = throughput["backbone (transformers forward)"]["tokens_per_s"]
    lines += [
        f"### Forward throughput (no grad, batch {batch} x {seq} tokens, median of {reps} interleaved runs)", "",
        "| case | median s | tokens/s | vs backbone |", "|---|---|---|---|",
    ]
    for name, r in throughput.items():
        lines.append(f"| {name} | {r['median_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.3f}x |")
    goals = [
        ("one expert (top, k=L/4)", 0.97), ("one expert (global, k=L/4)", 0.97),
        ("4-expert mixed batch (top, k=L/4)", 0.90), ("4-expert mixed batch (global, k=L/4)", 0.90),
    ]
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for name, goal in goals:
        ratio = throughput[name]["tokens_per_s"] / base
        lines.append(f"| {name} >= {goal:.2f}x backbone | {ratio:.3f}x | {'yes' if ratio >= goal else 'NO'} |")
    lines += [
        "", "### Expert switch latency", "",
        "| operation | median |", "|---|---|",
        f"| push_expert (built expert, k=L/4) | {switch['push_s'] * 1e6:,.0f} µs |",
        f"| pop_expert | {switch['pop_s'] * 1e6:,.0f} µs |",
        f"| for contrast: copy the expert's weights into the backbone layers | {switch['weight_copy_s'] * 1e3:,.1f} ms |",
        "", "Routing a request to another expert needs neither: the forward pass picks the expert's layer modules by",
        "reference, so a switch costs nothing beyond the forward itself.", "",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-probe":
        print(json.dumps(memory_probe(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/runtime.md"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--shapes", default="smollm2-135m", choices=sorted(SHAPES), help="backbone shapes (random weights)")
    args = p.parse_args()
    device = torch.device(args.device)
    print("memory ...", file=sys.stderr)
    memory = measure_memory(args.shapes)
    print("switch ...", file=sys.stderr)
    switch = measure_switch(shapes=args.shapes)
    print("throughput ...", file=sys.stderr)
    throughput = measure_throughput(device, args.dtype, args.batch, args.seq, args.reps, args.shapes)
    text = report(memory, throughput, switch, device, args.dtype, args.batch, args.seq, args.reps, args.shapes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
