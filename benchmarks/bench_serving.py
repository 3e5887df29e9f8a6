"""Serving benchmark: the real `ccoe serve` process on 127.0.0.1 under a bounded streaming load.

The model is the real SmolLM2-135M with the runtime demo's five experts (configs/runtime-demo.yaml:
fresh copies of their layers, so every expert generates what the backbone generates and both runs
produce the same number of tokens: throughput compares exactly). Traffic: the 75 domain queries of
benchmarks/routing/heldout.jsonl, in order, as chat requests with `model: auto` (the gate spreads
them over the five experts: mixed-expert batches) and, as the reference in the same harness, the
same requests with `model: backbone`. Runs alternate auto / backbone at each concurrency level. A second
server with `grouped_layers: false` then runs the `auto` traffic again: each expert layer of a mixed
step once per expert sub-batch instead of one grouped call over stacked weights (`ccoe.grouped`).

Per run: completion tokens/s over the run's wall, and p50/p95 of time to first token (TTFT) and of
the gaps between streamed chunks (ITL). The load generator is bounded: `--requests` per run and a
`--time-limit-s` after which the run stops sending (what was cut is reported).

    python benchmarks/bench_serving.py --out benchmarks/results/serving.md [--device cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_description  # noqa: E402


@dataclass
class Run:
    model: str
    concurrency: int
    label: str = ""
    sent: int = 0
    errors: list[str] = field(default_factory=list)
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    wall: float = 0.0
    cut: int = 0


def queries() -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "routing" / "heldout.jsonl").read_text().splitlines() if line.strip()]
    return [r["query"] for r in rows if r["domain"] is not None]


async def one(client: httpx.AsyncClient, run: Run, prompt: str, max_tokens: int, model: str | None = None) -> None:
    body = {"model": model or run.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    started, last = time.perf_counter(), None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                run.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    run.errors.append(chunk["error"]["message"])
                    return
                if chunk.get("usage") and not chunk["choices"]:
                    run.tokens += chunk["usage"]["completion_tokens"]
                    continue
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    now = time.perf_counter()
                    if last is None:
                        run.ttft.append(now - started)
                    else:
                        run.itl.append(now - last)
                    last = now
        run.latency.append(time.perf_counter() - started)
    except httpx.HTTPError as err:
        run.errors.append(repr(err))


async def load(url: str, run: Run, prompts: list[str], requests: int, max_tokens: int, time_limit_s: float,
               models: list[str] | None = None) -> Run:
    """`requests` requests at `run.concurrency` in flight (request n asks `models[n]` when given); none is
    sent after `time_limit_s`."""
    gate = asyncio.Semaphore(run.concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def bounded(n: int) -> None:
            async with gate:
                if time.perf_counter() - started > time_limit_s:
                    run.cut += 1
                    return
                run.sent += 1
                await one(client, run, prompts[n % len(prompts)], max_tokens, models[n] if models else None)

        await asyncio.gather(*(bounded(n) for n in range(requests)))
    run.wall = time.perf_counter() - started
    return run


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def build_artifact(folder: Path) -> Path:
    from ccoe.artifact import save_artifact
    from ccoe.cli import build_model
    from ccoe.config import CCoESpec, RouterSpec, load_yaml

    root = folder / "artifact"
    save_artifact(build_model(load_yaml(CCoESpec, ROOT / "configs" / "runtime-demo.yaml")), str(root),
                  router=load_yaml(RouterSpec, ROOT / "configs" / "router.yaml"))
    return root


def start_server(root: Path, folder: Path, device: str, max_batch: int, extra: str = "") -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = folder / "serve.yaml"
    config.write_text(f"host: 127.0.0.1\nport: {port}\npoll_interval_s: 0\ndevice: {device}\nmax_batch: {max_batch}\n{extra}")
    log = open(folder / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "ccoe.cli", "serve", "--model", str(root), "--config", str(config)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {(folder / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(1)
    raise RuntimeError("the server did not answer within 300 s")


def build_many(folder: Path, count: int) -> Path:
    """An artifact of `count` one-layer experts `x000`.. on SmolLM2-135M, each at a different depth and
    with its own values (so every blob differs), no gate: requests name their expert."""
    import torch

    from ccoe.artifact import save_artifact
    from ccoe.backbone import load_backbone
    from ccoe.config import BackboneSpec
    from ccoe.expert import create_expert
    from ccoe.model import CCoEModel

    backbone = load_backbone(BackboneSpec(source="smollm2-135m-instruct"))
    model = CCoEModel(backbone)
    for n in range(count):
        expert = create_expert(backbone, f"x{n:03d}", "general", [n % backbone.num_layers])
        with torch.no_grad():
            next(expert.parameters()).add_(1e-4 * (n + 1))
        model.push_expert(expert)
    root = folder / "many"
    save_artifact(model, str(root))
    return root


def zipf_models(count: int, requests: int, seed: int = 0, exponent: float = 1.1) -> list[str]:
    """Expert names drawn with probability proportional to 1/rank^exponent: a traffic mix with locality."""
    import random

    weights = [1 / (rank + 1) ** exponent for rank in range(count)]
    return [f"x{n:03d}" for n in random.Random(seed).choices(range(count), weights=weights, k=requests)]


def metrics_of(url: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[-1]) for line in httpx.get(url + "/metrics", timeout=10).text.splitlines()
            if line.startswith("ccoe_") and "{" not in line}


def residency(args, prompts: list[str], folder: Path) -> list[str]:
    """The same Zipf traffic over `args.experts` registered experts, with `args.resident` resident and with all."""
    root = build_many(folder, args.experts)
    models = zipf_models(args.experts, args.residency_requests)
    rows = []
    for label, extra in ((f"{args.resident} resident", f"max_resident: {args.resident}\n"), ("all resident", "")):
        process, url = start_server(root, folder, args.device, args.max_batch, extra)
        try:
            asyncio.run(load(url, Run("x000", 1), prompts, 2, args.max_tokens, args.time_limit_s))  # warm-up
            run = asyncio.run(load(url, Run("zipf", args.residency_concurrency, label), prompts, len(models), args.max_tokens,
                                   args.time_limit_s, models))
            m = metrics_of(url)
        finally:
            stop_server(process)
        rows.append((run, m))
        print(f"{label}: p95 latency {pct(run.latency, .95):.2f} s, {len(run.errors)} errors", flush=True)
    lines = ["", f"### {args.experts} registered experts, {args.resident} resident vs all resident", "",
             f"{args.residency_requests} chat requests naming their expert, drawn Zipf(1.1) over the experts (distinct experts "
             f"asked: {len(set(models))}), concurrency {args.residency_concurrency}, {args.max_tokens} new tokens at most; "
             "one-layer experts, each at its own depth. Cold experts load from the verified local blob cache.", "",
             "| residency | requests | errors | latency p50 (s) | latency p95 (s) | TTFT p95 (ms) | tokens/s | blob loads | evictions | resident at the end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run, m in rows:
        lines.append(f"| {run.label} | {run.sent} | {len(run.errors)} | {pct(run.latency, .5):.2f} | {pct(run.latency, .95):.2f} | "
                     f"{pct(run.ttft, .95) * 1e3:.0f} | {run.tokens / run.wall:.1f} | {m['ccoe_expert_loads_total']:.0f} | "
                     f"{m['ccoe_expert_evictions_total']:.0f} | {m['ccoe_resident_experts']:.0f} |")
    (few, _), (every, _) = rows
    lines += ["", f"- p95 latency with {args.resident} resident: **{pct(few.latency, .95) / pct(every.latency, .95):.2f}x** all-resident"]
    return lines


def stop_server(process: subprocess.Popen) -> None:
    import signal

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


UNGROUPED = "grouped layers off"


def table(runs: list[Run], args, device_name: str) -> list[str]:
    lines = ["## Serving: `ccoe serve` under streaming load (mixed experts vs the backbone)", "",
             f"Measured on {device_name}. SmolLM2-135M, five experts (runtime demo), chat requests of the 75 domain queries "
             f"(benchmarks/routing/heldout.jsonl), {args.max_tokens} new tokens at most, greedy, max_batch {args.max_batch}; "
             f"{args.requests} requests per run, runs alternating `auto` (the gate spreads them over the experts) and `backbone`; "
             "then `auto` again on a server with `grouped_layers: false` (a call per expert sub-batch instead of one grouped call).",
             "", "| concurrency | model | requests | errors | completion tokens/s | TTFT p50 (ms) | TTFT p95 (ms) | ITL p50 (ms) | ITL p95 (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.concurrency} | `{r.model}`{f' ({r.label})' if r.label else ''} | {r.sent}{f' ({r.cut} cut)' if r.cut else ''} | {len(r.errors)} | "
                     f"{r.tokens / r.wall:.1f} | {pct(r.ttft, .5) * 1e3:.0f} | {pct(r.ttft, .95) * 1e3:.0f} | "
                     f"{pct(r.itl, .5) * 1e3:.0f} | {pct(r.itl, .95) * 1e3:.0f} |")
    lines.append("")
    for c in sorted({r.concurrency for r in runs}):
        pair = {(r.model, r.label): r for r in runs if r.concurrency == c}
        rate = lambda r: r.tokens / r.wall  # noqa: E731
        if {("auto", ""), ("backbone", "")} <= set(pair):
            a, b = pair["auto", ""], pair["backbone", ""]
            line = (f"- concurrency {c}: mixed-expert serving at **{rate(a) / rate(b):.2f}x** the backbone's "
                    f"tokens/s ({a.tokens} vs {b.tokens} tokens; goal 0.90x)")
            if ("auto", UNGROUPED) in pair:
                line += f"; without grouped layers {rate(pair['auto', UNGROUPED]) / rate(b):.2f}x"
            lines.append(line)
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--time-limit-s", type=float, default=300)
    p.add_argument("--experts", type=int, default=100, help="registered experts of the residency case (0: skip it)")
    p.add_argument("--resident", type=int, default=8)
    p.add_argument("--residency-requests", type=int, default=96)
    p.add_argument("--residency-concurrency", type=int, default=8)
    p.add_argument("--out")
    args = p.parse_args()
    prompts = queries()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        root = build_artifact(folder)
        process, url = start_server(root, folder, args.device, args.max_batch)
        try:
            asyncio.run(load(url, Run("auto", 1), prompts, 2, args.max_tokens, args.time_limit_s))  # warm-up
            runs = []
            for c in (int(x) for x in args.concurrency.split(",")):
                for model in ("auto", "backbone"):
                    run = asyncio.run(load(url, Run(model, c), prompts, args.requests, args.max_tokens, args.time_limit_s))
                    runs.append(run)
                    print(f"concurrency {c} {model}: {run.tokens / run.wall:.1f} tokens/s, {len(run.errors)} errors", flush=True)
        finally:
            stop_server(process)
        process, url = start_server(root, folder, args.device, args.max_batch, "grouped_layers: false\n")
        try:
            asyncio.run(load(url, Run("auto", 1), prompts, 2, args.max_tokens, args.time_limit_s))  # warm-up
            for c in (int(x) for x in args.concurrency.split(",")):
                run = asyncio.run(load(url, Run("auto", c, UNGROUPED), prompts, args.requests, args.max_tokens, args.time_limit_s))
                runs.append(run)
                print(f"concurrency {c} auto ({UNGROUPED}): {run.tokens / run.wall:.1f} tokens/s, {len(run.errors)} errors", flush=True)
        finally:
            stop_server(process)
        extra = residency(args, prompts, folder) if args.experts else []
    if args.device.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = cpu_description()
    text = "\n".join(table(runs, args, device_name) + extra) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
