"""Per-domain report on the real SmolLM2-135M: base vs trained expert, task metric and held-out loss.

For each domain: train its expert with the demo budget (`configs/domain-experts.yaml`) through the
real path (`train_expert`: Lightning + MLflow, into a temporary store), then score the held-out
subset under the plain backbone and under the expert in one shared-prefix pass. Finally every expert
is pushed into one CCoE model and each expert's logits on its own prompts are compared with the
model that held only that expert: bit-identical means no other domain's scores changed.

    python benchmarks/domain_report.py --out benchmarks/results/domains.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccoe.backbone import load_backbone  # noqa: E402
from ccoe.config import CCoESpec, DataSpec, EvalSpec, ExpertJobSpec, TrackingSpec, TrainingSpec  # noqa: E402
from ccoe.domains import DOMAINS, eval_items, train_data_spec  # noqa: E402
from ccoe.evaluate import evaluate_domain  # noqa: E402
from ccoe.expert import load_expert  # noqa: E402
from ccoe.data import encode_prompt  # noqa: E402
from ccoe.model import CCoEModel  # noqa: E402
from lightning_modules.train import train_expert  # noqa: E402


class ReportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: CCoESpec
    training: TrainingSpec
    max_length: int = 384
    eval: EvalSpec


def run(spec: ReportSpec, work: Path, domains: list[str]) -> list[dict]:
    backbone = load_backbone(spec.model.backbone)
    rows, singles = [], {}
    for expert_spec in [e for e in spec.model.experts if e.domain in domains]:
        job = ExpertJobSpec(
            backbone=spec.model.backbone, expert=expert_spec,
            data=train_data_spec(expert_spec.domain, max_length=spec.max_length, val_fraction=0.05),
            training=spec.training, tracking=TrackingSpec(root=str(work / "mlruns")), output_dir=str(work / "experts"),
        )
        t0 = time.perf_counter()
        result = train_expert(job)
        train_s = time.perf_counter() - t0
        model = CCoEModel(backbone)
        model.push_expert(load_expert(result.blob_path, backbone, sha256=result.entry.sha256))
        domain = DOMAINS[expert_spec.domain]
        items = eval_items(domain.name)[: spec.eval.max_items.get(domain.name)]
        t0 = time.perf_counter()
        scores = evaluate_domain(
            model, backbone.tokenizer, domain, items, [None, expert_spec.name],
            spec=DataSpec(records=[], max_length=spec.eval.max_length), batch_size=spec.eval.batch_size,
            max_new_tokens=spec.eval.max_new_tokens.get(domain.name, 128), progress=True,
        )
        base, tuned = scores[None], scores[expert_spec.name]
        rows.append({"domain": domain.name, "expert": expert_spec.name, "layers": result.entry.layers, "n": len(items),
                     "base_metric": base.metric, "expert_metric": tuned.metric, "base_loss": base.loss, "expert_loss": tuned.loss,
                     "train_s": train_s, "eval_s": time.perf_counter() - t0, "final_train_loss": result.entry.metrics.get("train/loss")})
        singles[expert_spec.name] = (result.blob_path, result.entry.sha256, items[:4])
        print(f"  {rows[-1]}", file=sys.stderr)
    combined = CCoEModel(backbone)
    for path, sha, _ in singles.values():
        combined.push_expert(load_expert(path, backbone, sha256=sha))
    for row in rows:
        path, sha, probe = singles[row["expert"]]
        alone = CCoEModel(backbone)
        alone.push_expert(load_expert(path, backbone, sha256=sha))
        ids = torch.tensor([encode_prompt(backbone.tokenizer, probe[0]["prompt"])])
        with torch.no_grad():
            row["isolated"] = torch.equal(alone(ids, expert=row["expert"]).logits, combined(ids, expert=row["expert"]).logits)
    return rows


def report(rows: list[dict], spec: ReportSpec) -> str:
    t = spec.training
    lines = [
        "## Domains: base SmolLM2-135M vs its domain expert (real backbone, CPU)", "",
        f"Each expert: `top` k = 8 of 30 layers, {t.max_steps} steps x batch {t.batch_size} (lr {t.learning_rate:g}, warmup {t.warmup_steps},",
        f"cosine), sequences cut at {spec.max_length} tokens, trained through `train_expert` (Lightning + MLflow). Scores on a",
        "held-out subset (n); metrics as in the data cards (README). Loss = mean NLL of the gold response tokens.", "",
        "| domain | n | metric: base | metric: expert | loss: base | loss: expert | train s | eval s | other experts bit-identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['domain']} | {r['n']} | {r['base_metric']:.3f} | {r['expert_metric']:.3f} | {r['base_loss']:.3f} | "
                     f"{r['expert_loss']:.3f} | {r['train_s']:.0f} | {r['eval_s']:.0f} | {'yes' if r['isolated'] else 'NO'} |")
    beats = [r["domain"] for r in rows if r["expert_metric"] > r["base_metric"]]
    misses = [r["domain"] for r in rows if r["expert_metric"] <= r["base_metric"]]
    lower_loss = [r["domain"] for r in rows if r["expert_loss"] < r["base_loss"]]
    lines += [
        "", f"- Expert beats the base on its own metric: {', '.join(beats) or 'none'}"
        + (f"; **goal missed** for {', '.join(misses)}." if misses else " (all: goal met)."),
        f"- Held-out loss lower with the expert: {', '.join(lower_loss) or 'none'} of {len(rows)}.",
        "- \"Other experts bit-identical\": each expert's logits in the model holding all experts equal those in a model",
        "  holding only it, so adding the other domains' experts changed none of this domain's scores.", "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path(__file__).resolve().parent.parent / "configs" / "domain-experts.yaml")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/domains.md"))
    p.add_argument("--domains", nargs="*", default=sorted(DOMAINS))
    args = p.parse_args()
    import yaml

    spec = ReportSpec.model_validate(yaml.safe_load(args.config.read_text()))
    with tempfile.TemporaryDirectory(prefix="ccoe-domain-report-") as tmp:
        rows = run(spec, Path(tmp), args.domains)
    text = report(rows, spec)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
