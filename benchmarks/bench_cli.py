"""CLI and sandbox latency: what a person waits for on commands that load no model, and what the code
sandbox's isolation costs per program.

Every CLI command runs in a fresh process (as a user types it), on an artifact with SmolLM2-135M
shapes (random weights) and two top-k=L/4 experts; `info --load` is the slow path the fast commands
avoid. The sandbox runs a trivial program and a HumanEval-shaped one (imports typing, defines and
asserts a function) with every isolation layer this machine offers, against the same programs in a
bare `python -I -S -B` (no isolation at all), interleaved.

    python benchmarks/bench_cli.py --out benchmarks/results/cli.md
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import cpu_name  # noqa: E402
from benchmarks.bench_runtime import K_QUARTER, spec  # noqa: E402
from ccoe.artifact import save_artifact  # noqa: E402
from ccoe.backbone import load_backbone  # noqa: E402
from ccoe.config import LayerSelection, RouterSpec, load_yaml  # noqa: E402
from ccoe.domains.sandbox import isolation, run_python  # noqa: E402
from ccoe.expert import create_expert  # noqa: E402
from ccoe.model import CCoEModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRIVIAL = "print('ok')\n"
HUMANEVAL_SHAPED = (
    "from typing import List\n\n"
    "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n\n"
    "assert has_close_elements([1.0, 2.8, 3.0], 0.3)\nassert not has_close_elements([1.0, 2.0], 0.5)\n"
)


def _seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def measure_cli(artifact: str, reps: int) -> list[dict]:
    ccoe = [sys.executable, "-m", "ccoe.cli"]
    commands = {
        "ccoe --help": [*ccoe, "--help"],
        "ccoe route (rules, no model)": [*ccoe, "route", "--artifact", artifact, "Is the landlord liable for the injury?"],
        "ccoe info (manifest only)": [*ccoe, "info", "--artifact", artifact],
        "ccoe gc (dry run)": [*ccoe, "gc", "--storage", artifact, "--artifact", artifact],
        "ccoe info --load (model loaded)": [*ccoe, "info", "--artifact", artifact, "--load"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(reps):  # interleaved, so load drifts hit every command alike
        for name, command in commands.items():
            times[name].append(_seconds(command))
    return [{"command": name, "median_s": statistics.median(t), "min_s": min(t), "n": len(t)} for name, t in times.items()]


def _bare(code: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "program.py"
        program.write_text(code)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-B", str(program)], check=True, capture_output=True, cwd=tmp)
        return time.perf_counter() - started


def _sandboxed(code: str) -> float:
    started = time.perf_counter()
    result = run_python(code)
    elapsed = time.perf_counter() - started
    if not result.passed:
        raise RuntimeError(f"sandboxed benchmark program failed: {result.output}")
    return elapsed


def measure_sandbox(reps: int) -> list[dict]:
    rows = []
    for label, code in (("trivial program", TRIVIAL), ("HumanEval-shaped program", HUMANEVAL_SHAPED)):
        bare, boxed = [], []
        for _ in range(reps):
            bare.append(_bare(code))
            boxed.append(_sandboxed(code))
        rows.append({"program": label, "bare_ms": 1e3 * statistics.median(bare), "sandbox_ms": 1e3 * statistics.median(boxed), "n": reps})
    return rows


def report(cli: list[dict], sandbox: list[dict], layers: tuple[str, ...]) -> str:
    cpu = cpu_name()
    lines = ["## CLI latency and sandbox cost", "", f"Measured on {cpu}.", "",
             "Fresh process per command (`python -m ccoe.cli ...`), artifact with SmolLM2-135M shapes and two k=L/4 experts; "
             "medians of interleaved runs. Goal: `ccoe route` under 1 s (it took 5-7 s when importing the router imported torch).", "",
             "| command | median | min | n |", "|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['median_s']:.2f} s | {r['min_s']:.2f} s | {r['n']} |" for r in cli]
    route = next(r for r in cli if r["command"].startswith("ccoe route"))
    lines += ["", f"`ccoe route`: {route['median_s']:.2f} s, goal < 1 s **{'met' if route['median_s'] < 1 else 'missed'}**.", "",
              f"Code sandbox (`ccoe.domains.sandbox.run_python`, layers active here: {', '.join(layers)}) against the same program "
              "in a bare `python -I -S -B` (no isolation), interleaved:", "",
              "| program | bare | sandboxed | overhead | n |", "|---|---|---|---|---|"]
    lines += [f"| {r['program']} | {r['bare_ms']:.0f} ms | {r['sandbox_ms']:.0f} ms | +{r['sandbox_ms'] - r['bare_ms']:.0f} ms | {r['n']} |"
              for r in sandbox]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sandbox-reps", type=int, default=20)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    backbone = load_backbone(spec())
    model = CCoEModel(backbone)
    for name in ("law", "sql"):
        model.push_expert(create_expert(backbone, name, name, LayerSelection(strategy="top", k=K_QUARTER)))
    with tempfile.TemporaryDirectory() as tmp:
        save_artifact(model, tmp, router=load_yaml(RouterSpec, ROOT / "configs" / "router.yaml"))
        del model, backbone
        cli = measure_cli(tmp, args.reps)
    text = report(cli, measure_sandbox(args.sandbox_reps), isolation())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
