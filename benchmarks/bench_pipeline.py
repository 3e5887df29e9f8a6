"""Pipeline benchmark: wall time of the whole pipeline (what `make demo` runs) and how much of it is
orchestration (Prefect, MLflow bookkeeping, job process start-ups, imports) rather than training,
merging and evaluation.

Each run starts from an empty work folder in a fresh process (`python -m flows.pipeline`, the
ephemeral Prefect API and a sqlite MLflow, as `make demo`), so nothing is skipped as unchanged; the
split comes from the pipeline's own timings (in-process seconds of each training job, of the merge and
of the evaluation), the rest of the wall being orchestration.

    python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline.md   # demo (1 run) + tiny (3 runs)
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

from ccoe.config import SERVICE_ENV, PipelineSpec, load_yaml  # noqa: E402
from ccoe.pipeline import wall_split  # noqa: E402
DRIVER = """
import json, sys, time
from flows.pipeline import pipeline
started = time.perf_counter()
summary = pipeline(sys.argv[1])
json.dump({"pipeline_s": time.perf_counter() - started, "timings": summary["timings"], "promote": summary["promote"]}, open(sys.argv[2], "w"))
"""


def run_once(config: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        relocated = work / config.name
        load_yaml(PipelineSpec, config).with_outputs_in(work).to_yaml(relocated)
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV and k != "PREFECT_API_URL"}  # embedded services, as make demo
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", DRIVER, str(relocated), str(work / "out.json")], cwd=REPO, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        timings = json.loads((work / "out.json").read_text())["timings"]
    return {"wall_s": wall, **wall_split(timings, wall), "jobs": len(timings["train_jobs_s"])}


def row(name: str, runs: list[dict]) -> str:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    share = med["orchestration_s"] / med["wall_s"]
    return (f"| {name} | {len(runs)} | {med['jobs']:.0f} | {med['wall_s'] / 60:.2f} | {med['train_s'] / 60:.2f} | {med['merge_s']:.1f} | "
            f"{med['evaluate_s'] / 60:.2f} | {med['orchestration_s'] / 60:.2f} | {share:.0%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=["configs/demo.yaml:1", "configs/tiny.yaml:3"], help="CONFIG:REPEATS")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    lines = [
        "## Pipeline: wall time and orchestration share", "",
        "Each run: a fresh process runs the `pipeline` flow on an empty work folder (ephemeral Prefect API, sqlite MLflow,",
        "local blob store), exactly what `make demo` runs. Training = in-process seconds of the expert jobs (backbone load",
        "to MLflow finalize); merge and evaluation = their library calls; orchestration = the rest of the wall (Prefect",
        "server start and flow/task bookkeeping, job process start-ups and imports, MLflow runs, aliases and artifacts).",
        "Medians over the runs.", "",
        "| config | runs | experts | wall (min) | training (min) | merge (s) | evaluation (min) | orchestration (min) | orchestration share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in args.configs:
        name, _, reps = item.partition(":")
        runs = []
        for i in range(int(reps or 1)):
            runs.append(run_once(REPO / name))
            print(f"  {name} run {i + 1}: {runs[-1]}", file=sys.stderr)
        lines.append(row(f"`{name}`", runs))
    demo = [line for line in lines if line.startswith("| `configs/demo.yaml`")]
    if demo:
        share = demo[0].rsplit("|", 2)[1].strip()
        lines += ["", f"On the demo budgets orchestration is {share} of the wall; on the tiny config (seconds of compute) the",
                  "fixed cost of Prefect, MLflow and process start-ups is most of it, which is what a CPU-only CI run of the flows pays."]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
