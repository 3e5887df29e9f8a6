"""Pipeline benchmark: wall time of the whole pipeline (what `make demo` runs) and how much of it is
orchestration (Prefect, MLflow bookkeeping, job process start-ups, imports) rather than training,
merging and evaluation.

Each run starts from an empty work folder in a fresh process (`python -m flows.pipeline`, the
ephemeral Prefect API and a sqlite MLflow, as `make demo`), so nothing is skipped as unchanged; the
split comes from the pipeline's own timings (in-process seconds of each training job, of the merge and
of the evaluation), the rest of the wall being orchestration.

    python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline.md   # demo (1 run) + tiny (3 runs)

The evaluation phase alone: after the first run of the first config, the candidate it registered is
evaluated again (`ccoe.pipeline.evaluate_candidate`, what the `evaluate` flow calls, without the MLflow
run and the chart) in a fresh process per setting of `eval.generation_batch_size` (`--eval-batches`,
alternated, `--eval-repeats` rounds), so their ratio is measured side by side on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_description  # noqa: E402
from ccoe.config import SERVICE_ENV, PipelineSpec, load_yaml  # noqa: E402
from ccoe.pipeline import wall_split  # noqa: E402
DRIVER = """
import json, sys, time
from flows.pipeline import pipeline
started = time.perf_counter()
summary = pipeline(sys.argv[1])
json.dump({"pipeline_s": time.perf_counter() - started, "timings": summary["timings"], "promote": summary["promote"],
           "version": summary["version"], "trained": summary["trained"]}, open(sys.argv[2], "w"))
"""
EVAL_DRIVER = """
import json, sys, time
from ccoe.config import PipelineSpec, load_yaml
from ccoe.pipeline import evaluate_candidate
spec = load_yaml(PipelineSpec, sys.argv[1])
spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"generation_batch_size": int(sys.argv[2])})})
started = time.perf_counter()
evaluation = evaluate_candidate(spec, int(sys.argv[3]), sys.argv[4].split(","))
json.dump({"evaluate_s": time.perf_counter() - started, "domains_s": evaluation.seconds}, open(sys.argv[5], "w"))
"""


def run_once(config: Path, eval_batches: list[int] = (), eval_repeats: int = 1) -> tuple[dict, list[dict]]:
    """One pipeline run on an empty work folder; then, when `eval_batches` is given, the evaluation
    phase alone on the version it registered, per generation batch size, alternated over the repeats."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        relocated = work / config.name
        load_yaml(PipelineSpec, config).with_outputs_in(work).to_yaml(relocated)
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV and k != "PREFECT_API_URL"}  # embedded services, as make demo
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", DRIVER, str(relocated), str(work / "out.json")], cwd=REPO, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        out = json.loads((work / "out.json").read_text())
        evaluations = []
        for _ in range(eval_repeats if out["version"] is not None else 0):
            for batch in eval_batches:
                subprocess.run([sys.executable, "-c", EVAL_DRIVER, str(relocated), str(batch), str(out["version"]),
                                ",".join(out["trained"]), str(work / "eval.json")], cwd=REPO, env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                evaluations.append({"generation_batch_size": batch, **json.loads((work / "eval.json").read_text())})
                print(f"  evaluation alone, generation batch {batch}: {evaluations[-1]['evaluate_s']:.0f} s", file=sys.stderr)
    timings = out["timings"]
    return {"wall_s": wall, **wall_split(timings, wall), "jobs": len(timings["train_jobs_s"])}, evaluations


def evaluation_lines(name: str, evaluations: list[dict]) -> list[str]:
    """The evaluation-phase table: per generation batch size, the median total and per-domain seconds."""
    domains = list(evaluations[0]["domains_s"])
    lines = ["", f"### Evaluation phase alone ({name}'s registered candidate, fresh process per run)", "",
             f"| generation batch | runs | evaluation (min) | {' | '.join(f'{d} (s)' for d in domains)} |",
             "|---|---|---|" + "---|" * len(domains)]
    medians = {}
    for batch in dict.fromkeys(e["generation_batch_size"] for e in evaluations):
        runs = [e for e in evaluations if e["generation_batch_size"] == batch]
        medians[batch] = statistics.median(e["evaluate_s"] for e in runs)
        cells = " | ".join(f"{statistics.median(e['domains_s'][d] for e in runs):.0f}" for d in domains)
        lines.append(f"| {batch} | {len(runs)} | {medians[batch] / 60:.2f} | {cells} |")
    if len(medians) > 1:
        (small, slow), (large, fast) = min(medians.items()), max(medians.items())
        lines += ["", f"Batch {large} vs {small}: the evaluation phase takes {fast / slow:.2f}x the time, measured side by side."]
    return lines


def row(name: str, runs: list[dict]) -> str:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    share = med["orchestration_s"] / med["wall_s"]
    return (f"| {name} | {len(runs)} | {med['jobs']:.0f} | {med['wall_s'] / 60:.2f} | {med['train_s'] / 60:.2f} | {med['merge_s']:.1f} | "
            f"{med['evaluate_s'] / 60:.2f} | {med['orchestration_s'] / 60:.2f} | {share:.0%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=["configs/demo.yaml:1", "configs/tiny.yaml:3"], help="CONFIG:REPEATS")
    p.add_argument("--eval-batches", type=lambda v: [int(x) for x in v.split(",") if x], default=[8, 32],
                   help="generation batch sizes for the evaluation phase alone, after the first config's first run ('' for none)")
    p.add_argument("--eval-repeats", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    lines = [
        "## Pipeline: wall time and orchestration share", "",
        "Each run: a fresh process runs the `pipeline` flow on an empty work folder (ephemeral Prefect API, sqlite MLflow,",
        "local blob store), exactly what `make demo` runs. Training = in-process seconds of the expert jobs (backbone load",
        "to MLflow finalize); merge and evaluation = their library calls; orchestration = the rest of the wall (Prefect",
        "server start and flow/task bookkeeping, job process start-ups and imports, MLflow runs, aliases and artifacts).",
        f"Medians over the runs. Measured on {cpu_description()}.", "",
        "| config | runs | experts | wall (min) | training (min) | merge (s) | evaluation (min) | orchestration (min) | orchestration share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    evaluations: tuple[str, list[dict]] | None = None
    for item in args.configs:
        name, _, reps = item.partition(":")
        runs = []
        for i in range(int(reps or 1)):
            measured, alone = run_once(REPO / name, args.eval_batches if evaluations is None else [], args.eval_repeats)
            evaluations = evaluations or ((name, alone) if alone else None)
            runs.append(measured)
            print(f"  {name} run {i + 1}: {runs[-1]}", file=sys.stderr)
        lines.append(row(f"`{name}`", runs))
    demo = [line for line in lines if line.startswith("| `configs/demo.yaml`")]
    if demo:
        share = demo[0].rsplit("|", 2)[1].strip()
        lines += ["", f"On the demo budgets orchestration is {share} of the wall; on the tiny config (seconds of compute) the",
                  "fixed cost of Prefect, MLflow and process start-ups is most of it, which is what a CPU-only CI run of the flows pays."]
    if evaluations:
        lines += evaluation_lines(f"`{evaluations[0]}`", evaluations[1])
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
