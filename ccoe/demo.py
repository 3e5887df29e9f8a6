"""Runtime demo (`make demo`): the real SmolLM2-135M backbone with five domain experts.

Shows, end to end on CPU: building experts, memory against an ensemble, the gate's routing with its
reasons, one generation batch mixing experts, pop-and-push leaving other experts bit-identical, and
an artifact save/load round trip that reproduces logits. Training the experts is the pipeline's job.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ccoe.artifact import load_artifact, save_artifact
from ccoe.cli import build_model, describe, print_info
from ccoe.config import CCoESpec, RouterSpec, load_yaml
from ccoe.expert import expert_from_spec
from ccoe.generation import generate_text
from ccoe.router import RuleRouter

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "What is 17 * 23? Compute the product.",
    "Write a Python function that returns the reverse of a string.",
    "Write a SQL query that lists all customers from Brazil in the customers table.",
    "In tort law, what must a plaintiff prove to win a negligence lawsuit?",
    "What is the usual treatment for a bacterial infection with fever?",
    "Tell me a short story about a lighthouse.",
]


def _probe_logits(model, tokenizer, experts):
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        return model.forward_many(ids, experts=experts)


def run(config: Path, router_path: Path, out: Path, max_new_tokens: int) -> None:
    torch.manual_seed(0)
    spec = load_yaml(CCoESpec, config)
    router_spec = load_yaml(RouterSpec, router_path)
    t0 = time.perf_counter()
    model = build_model(spec)
    tokenizer = model.backbone.tokenizer
    print(f"== loaded {spec.backbone.source} + {len(model.experts)} experts in {time.perf_counter() - t0:.1f} s\n")
    print_info(describe(model))

    print("\n== routing (rule-based gate + expert-domain mapping matrix)")
    router = RuleRouter(router_spec)
    decisions = router.route_many(PROMPTS, available=model.expert_names())
    for prompt, decision in zip(PROMPTS, decisions):
        print(f"  [{decision.expert or 'backbone':>8}] {prompt[:60]:<60} <- {decision.reason}")

    print(f"\n== one generation batch mixing {len({d.expert for d in decisions})} routes (greedy, {max_new_tokens} new tokens)")
    t0 = time.perf_counter()
    completions = generate_text(model, tokenizer, PROMPTS, [d.expert for d in decisions], max_new_tokens=max_new_tokens)
    elapsed = time.perf_counter() - t0
    for c in completions:
        print(f"  [{c.expert or 'backbone'}] {c.prompt}\n      {c.text[:300]!r}")
    print(f"  ({elapsed:.1f} s for {len(PROMPTS)} prompts)")

    print("\n== pop-and-push: replace 'law'; every other expert's logits must stay bit-identical")
    names = [n for n in model.expert_names() if n != "law"]
    before = _probe_logits(model, tokenizer, names)
    model.pop_expert("law")
    law_spec = next(e for e in spec.experts if e.name == "law")
    model.push_expert(expert_from_spec(model.backbone, law_spec.model_copy(update={"layers": law_spec.layers.model_copy(update={"k": 2})})))
    after = _probe_logits(model, tokenizer, names)
    identical = all(torch.equal(before[n], after[n]) for n in names)
    print(f"  law now owns layers {list(model.experts['law'].layer_indices)}; others bit-identical: {identical}")
    if not identical:
        raise SystemExit("pop-and-push changed another expert's logits")

    print(f"\n== artifact round trip at {out}")
    manifest = save_artifact(model, str(out), router=router_spec)
    reloaded, _, _ = load_artifact(str(out))
    again = _probe_logits(reloaded, tokenizer, list(manifest.experts))
    now = _probe_logits(model, tokenizer, list(manifest.experts))
    same = all(torch.equal(again[n], now[n]) for n in manifest.experts)
    print(f"  {len(manifest.experts)} expert blobs, sha256-verified on load; logits reproduced exactly: {same}")
    if not same:
        raise SystemExit("artifact round trip changed logits")
    print(f"\nTry:  .venv/bin/ccoe generate --artifact {out} \"Compute 12 + 30 and explain.\"")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "runtime-demo.yaml")
    p.add_argument("--router", type=Path, default=ROOT / "configs" / "router.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "demo-artifact")
    p.add_argument("--max-new-tokens", type=int, default=40)
    args = p.parse_args()
    run(args.config, args.router, args.out, args.max_new_tokens)


if __name__ == "__main__":
    main()
