"""Continual updates on the real SmolLM2-135M: continuing the champion's expert vs retraining from scratch.

Math problems arrive as three shards, each drawn from its own third of the templates
(`ccoe.domains.math.template_shards`, 400 rows each). After each shard arrives, the scheduled
`pipeline` flow runs (a fresh process each time, ephemeral Prefect and sqlite MLflow, as `make demo`)
for two registries side by side:
- **continued** (`configs/continual.yaml`): `init: champion`, the new shard plus a replay sample of
  half as many earlier training rows, the same steps every round;
- **scratch**: `init: backbone` on every shard so far, with the steps growing with the data (steps x
  round), so both have seen the same number of examples per shard at the end.
Then one process scores, on every shard's held-out rows (the trainer never saw them), the base, the
continued expert trained in round 1 and in round 3, the scratch expert of round 3 (whether or not the
gate promoted them) and, where the gate refused a round-3 update, the champion that stays served
(`-served`), in one shared-prefix pass: exact match and NLL per shard, paired 95% intervals
(ccoe.evidence) for continued - scratch and for forgetting (shard 1 after round 3 - after round 1).

    python benchmarks/bench_continual.py --out benchmarks/results/continual.md   # make continual-report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_description  # noqa: E402
from ccoe.config import SERVICE_ENV, DataSpec, GateSpec, PipelineSpec, StorageSpec, load_yaml  # noqa: E402

DRIVER = """
import json, sys
from flows.pipeline import pipeline
summary = pipeline(sys.argv[1])
keep = ("trained", "skipped", "failures", "version", "promote", "rows", "timings")
json.dump({k: summary.get(k) for k in keep}, open(sys.argv[2], "w"))
"""


def variants(spec: PipelineSpec, work: Path, shards: Path, round_: int) -> dict[str, PipelineSpec]:
    """The two pipelines of one round, every output in its own folder under `work`."""
    plan = spec.experts[0]
    location = plan.shards.model_copy(update={"location": StorageSpec(uri=str(shards))})
    continued = plan.model_copy(update={"shards": location, "init": "champion"})
    steps = spec.training.max_steps * round_
    scratch = plan.model_copy(update={"shards": location, "init": "backbone",
                                      "training": plan.training.model_copy(update={"max_steps": steps})})
    return {"continued": spec.with_outputs_in(work / "continued").model_copy(update={"experts": [continued]}),
            "scratch": spec.with_outputs_in(work / "scratch").model_copy(update={"experts": [scratch]})}


def run_round(spec: PipelineSpec, path: Path) -> dict:
    spec.to_yaml(path)
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV and k != "PREFECT_API_URL"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", DRIVER, str(path), str(path.with_suffix(".json"))], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return {**json.loads(path.with_suffix(".json").read_text()), "wall_s": time.perf_counter() - started}


def expert_blob(spec: PipelineSpec, version: int | str) -> tuple[str, bytes]:
    """The expert's blob in a registry version (a number, or the alias "champion")."""
    from ccoe import registry
    from ccoe.artifact import fetch_blob
    from ccoe.manifest import blob_store_for

    manifest = registry.get_version(spec.registry, version).manifest
    entry = manifest.experts[spec.experts[0].expert.name]
    return entry.sha256, fetch_blob(blob_store_for(manifest, None, spec.storage), entry)


def score(spec: PipelineSpec, blobs: dict[str, tuple[str, bytes]], shard_shas: list[str]) -> dict:
    """Every route on every shard's held-out rows: per shard and route exact match and NLL; the paired
    intervals the table needs."""
    from ccoe.backbone import load_backbone
    from ccoe.continual import held_out_rows
    from ccoe.domains import DOMAINS
    from ccoe.evaluate import evaluate_domain
    from ccoe.evidence import paired_difference
    from ccoe.expert import expert_from_bytes
    from ccoe.gate import loss_decrease
    from ccoe.model import CCoEModel
    from ccoe.pipeline import shard_format

    backbone = load_backbone(spec.backbone)
    model = CCoEModel(backbone)
    for name, (sha, data) in blobs.items():
        model.push_expert(expert_from_bytes(data, backbone, sha256=sha, name=name))
    template = shard_format(spec, spec.experts[0])
    per_shard = [held_out_rows([sha], template) for sha in shard_shas]
    items = [row for rows in per_shard for row in rows]
    routes = [None, *blobs]
    result = evaluate_domain(model, backbone.tokenizer, DOMAINS["math"], items, routes, spec=DataSpec(records=[], max_length=spec.eval.max_length),
                             batch_size=spec.eval.batch_size, max_new_tokens=spec.eval.max_new_tokens.get("math", 64), progress=True)
    gate = GateSpec()
    cut = lambda s, lo, hi: type(s)(s.domain, s.route, s.loss, s.metric, hi - lo, s.item_scores[lo:hi], s.item_nll[lo:hi], s.item_tokens[lo:hi])  # noqa: E731
    bounds, start = [], 0
    for rows in per_shard:
        bounds.append((start, start + len(rows)))
        start += len(rows)
    table = {}
    for route in routes:
        label = route or "base"
        table[label] = []
        for lo, hi in bounds:
            part = cut(result[route], lo, hi)
            nll = sum(part.item_nll) / max(sum(part.item_tokens), 1.0)
            table[label].append({"n": hi - lo, "metric": sum(part.item_scores) / (hi - lo), "nll": nll})

    def compare(a: str, b: str, lo: int, hi: int) -> dict:
        x, y = cut(result[a], lo, hi), cut(result[b], lo, hi)
        metric = paired_difference(x.item_scores, y.item_scores, binary=True)
        return {"metric": [metric.estimate, metric.low, metric.high], "nll_decrease": list(_triple(loss_decrease(gate, x, y)))}

    return {"per_shard": table, "n": len(items),
            "continued_vs_scratch": compare("continued-r3", "scratch-r3", 0, len(items)),
            "forgetting_continued": compare("continued-r3", "continued-r1", *bounds[0]),
            "forgetting_scratch": compare("scratch-r3", "continued-r1", *bounds[0])}


def _triple(d) -> tuple[float, float, float]:
    return d.estimate, d.low, d.high


def fmt(triple: list[float], digits: int = 3) -> str:
    e, lo, hi = triple
    return f"{e:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def report(spec: PipelineSpec, rounds: list[dict], scores: dict, shard_rows: int) -> str:
    steps, batch = spec.training.max_steps, spec.training.batch_size
    lines = [
        "## Continual updates: continued vs from scratch (real SmolLM2-135M, math shards)", "",
        f"Three shards of {shard_rows} math problems arrive in turn, each from its own third of the 12 templates. After each, the",
        "scheduled `pipeline` flow runs in a fresh process for two registries: **continued** (`configs/continual.yaml`: init",
        f"champion, the new shard + replay of half as many earlier training rows, {steps} steps x {batch} every round) and",
        f"**scratch** (init backbone on all shards so far, {steps} x round steps, so both have seen as many examples per shard).",
        f"Measured on {cpu_description()}.", "",
        "| round | variant | steps | train s | gate: new shards NLL decrease [95% CI] | earlier shards | promoted |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        rows = {row["domain"]: row for row in r["summary"].get("rows") or []}
        cell = lambda key: (fmt([rows[key]["diff"], rows[key]["diff_low"], rows[key]["diff_high"]]) + f" (n={rows[key]['n']})") if key in rows else "-"  # noqa: E731
        train_s = sum((r["summary"].get("timings") or {}).get("train_jobs_s", {}).values())
        lines.append(f"| {r['round']} | {r['variant']} | {r['steps']} | {train_s:.0f} | {cell('math.new-shards')} | "
                     f"{cell('math.earlier-shards')} | {r['summary'].get('promote')} |")
    cost = {v: sum(sum((r["summary"].get("timings") or {}).get("train_jobs_s", {}).values()) for r in rounds if r["variant"] == v)
            for v in ("continued", "scratch")}
    last = {v: next(sum((r["summary"].get("timings") or {}).get("train_jobs_s", {}).values()) for r in rounds if r["variant"] == v and r["round"] == 3)
            for v in ("continued", "scratch")}
    lines += ["", f"Training time, all three rounds: continued {cost['continued']:.0f} s vs scratch {cost['scratch']:.0f} s "
              f"({cost['continued'] / cost['scratch']:.2f}x); round 3 alone {last['continued']:.0f} s vs {last['scratch']:.0f} s "
              f"({last['continued'] / last['scratch']:.2f}x). Goal: at most 0.5x.", "",
              f"Held-out rows of every shard (n={scores['n']}, never trained on), scored in one pass after round 3 (`-r1`/`-r3`: the",
              "expert that round trained, promoted or not; `-served`: the champion kept where the gate refused round 3):", "",
              "| model | " + " | ".join(f"shard {i + 1}: exact match / NLL" for i in range(len(scores['per_shard']['base']))) + " |",
              "|---|" + "---|" * len(scores["per_shard"]["base"])]
    for label, shards in scores["per_shard"].items():
        lines.append(f"| {label} | " + " | ".join(f"{s['metric']:.3f} / {s['nll']:.3f} (n={s['n']})" for s in shards) + " |")
    c = scores["continued_vs_scratch"]
    lines += ["", f"- Continued - scratch over all shards: exact match {fmt(c['metric'])}, NLL decrease {fmt(c['nll_decrease'])}.",
              f"- Forgetting check, shard 1 after round 3 - the continued expert of round 1 (negative = forgotten): continued {fmt(scores['forgetting_continued']['metric'])} "
              f"exact match, NLL decrease {fmt(scores['forgetting_continued']['nll_decrease'])}; scratch "
              f"{fmt(scores['forgetting_scratch']['metric'])}, NLL decrease {fmt(scores['forgetting_scratch']['nll_decrease'])}.",
              ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "continual.yaml")
    p.add_argument("--shard-rows", type=int, default=400)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/continual.md"))
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (the shards, both registries' MLflow stores "
                   "and blobs: open them with `mlflow ui` to see each expert's lineage); default: a temporary folder")
    args = p.parse_args()
    from ccoe.continual import list_shards
    from ccoe.domains.math import template_shards

    spec = load_yaml(PipelineSpec, args.config)
    shards = template_shards(3, args.shard_rows)
    with tempfile.TemporaryDirectory(prefix="ccoe-continual-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        incoming = work / "shards"
        incoming.mkdir(parents=True, exist_ok=False)
        rounds, blobs = [], {}
        for number, rows in enumerate(shards, 1):
            (incoming / f"2026-12-{number:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            for variant, v_spec in variants(spec, work, incoming, number).items():
                summary = run_round(v_spec, work / f"{variant}-{number}.yaml")
                steps = v_spec.experts[0].training.max_steps or v_spec.training.max_steps
                rounds.append({"round": number, "variant": variant, "steps": steps, "summary": summary})
                print(f"round {number} {variant}: trained {summary['trained']} promote {summary['promote']} "
                      f"in {summary['wall_s']:.0f} s", file=sys.stderr, flush=True)
                if number in (1, 3) and (variant == "continued" or number == 3):  # the expert this round trained
                    blobs[f"{variant}-r{number}"] = expert_blob(v_spec, summary["version"])
                if number == 3 and not summary["promote"]:  # refused by the gate: what is served is the champion
                    blobs[f"{variant}-served"] = expert_blob(v_spec, "champion")
        shas = [s.sha256 for s in list_shards(variants(spec, work, incoming, 3)["continued"].experts[0].shards)]
        scores = score(spec, blobs, shas)
    text = report(spec, rounds, scores, args.shard_rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"rounds": rounds, "scores": scores}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
