"""Collaboration benchmark: composed sql -> math tasks on the real SmolLM2-135M, planned vs single experts.

1. Train the math and sql experts (budgets of configs/domain-experts.yaml; `--sql-steps` for the sql
   expert's steps, 240 by default: at the domain report's 80 it never learned two of the six counting
   templates the composed tasks use, invoice years and support representatives, 0/19) and the planner
   (configs/planner.yaml) into an artifact under `--work` (reused when it is already there), and its
   learned router (`ccoe router train`, default settings: with the planner there, it learns composed
   queries as the class `planning`).
2. Composed tasks (`ccoe.domains.composed`) from seed 1000, minus every planner training query:
   a Chinook count feeds an arithmetic word problem, the answer is exact.
3. Systems, all greedy on the same tasks, every non-SQL row decoded with the calculator
   (`ccoe.calculator`; `--no-calculator` for none), so that differences come from planning:
   - base: the backbone answers the whole query (its last number is the answer);
   - routed: the artifact's gate (learned router, rules below its threshold) picks one expert for
     the whole query; its completion resolves as that domain resolves it (SQL is run on the
     read-only database, math's last number);
   - sql only, math only: the same with each expert forced (the best single expert in hindsight);
   - planned: what `plan_and_run` does: the learned router settles the queries it puts in one
     domain, the planner plans the rest, and the plans run step by step (`ccoe.planning`);
   - gold plan: the benchmark's own plan, run the same way (what a perfect planner would reach).
   End-to-end accuracy with Clopper-Pearson 95% intervals; planned minus the best single system
   as a paired interval (`ccoe.evidence.paired_difference`); plan accuracy (steps exactly right, and
   domains right); seconds per task (batches of `--batch`).
4. Single-domain queries (the math and sql held-out sets): routed vs planned vs the planner planning
   every query, scored by the domain's own scorer on the final completion, with how often the
   planner ran and the seconds of each.

A (prompt, expert) pair sent whole to one expert is generated once and reused by every system that
sends it (routed = sql only when the gate picks sql; a one-step plan = the routed run when the
planner picks the gate's expert; the gold plan = the planned run where the planner wrote exactly
the gold plan): greedy decoding makes them the same run, and each system is charged its share of
the batch's seconds.

    python benchmarks/bench_planning.py --out benchmarks/results/planning.md [--composed 40 --single 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from benchmarks.domain_report import ReportSpec, cpu_name  # noqa: E402
from ccoe.artifact import expert_mapping, load_artifact, save_artifact  # noqa: E402
from ccoe.backbone import load_backbone  # noqa: E402
from ccoe.config import ExpertJobSpec, PlannerSpec, TrackingSpec, load_yaml  # noqa: E402
from ccoe.domains import DOMAINS, eval_items, router_spec, train_data_spec  # noqa: E402
from ccoe.domains.composed import ComposedTask, composed_tasks  # noqa: E402
from ccoe.domains.math import final_number  # noqa: E402
from ccoe.evidence import clopper_pearson, paired_difference  # noqa: E402
from ccoe.expert import load_expert  # noqa: E402
from ccoe.manifest import PLANNER_DOMAIN, read_manifest  # noqa: E402
from ccoe.model import CCoEModel  # noqa: E402
from ccoe.router import RouteDecision  # noqa: E402
from ccoe.planning import (  # noqa: E402
    Plan, PlanResult, PlanStep, StepTool, default_tools, execute_plans, plan_queries, planning_setup, router_plans, shared_states, single_step,
)
from lightning_modules.planner import train_planner  # noqa: E402
from lightning_modules.train import train_expert  # noqa: E402

DOMAINS_USED = ("math", "sql")


def build_artifact(work: Path, retrain_planner: bool = False, sql_steps: int | None = None) -> Path:
    """math + sql experts and the planner in `work/artifact`; an artifact already there is reused
    (with `retrain_planner`, its planner is trained again on today's planner data and pushed in its place)."""
    root = work / "artifact"
    if (root / "ccoe.json").is_file():
        if retrain_planner:
            train_bench_planner(work, root)
        return root
    report = ReportSpec.model_validate(yaml.safe_load((ROOT / "configs" / "domain-experts.yaml").read_text()))
    backbone = load_backbone(report.model.backbone)
    model = CCoEModel(backbone)
    for expert in [e for e in report.model.experts if e.domain in DOMAINS_USED]:
        training, max_length = report.budget(expert.domain)
        if expert.domain == "sql" and sql_steps is not None:
            training = training.model_copy(update={"max_steps": sql_steps})
        (work / f"{expert.domain}-budget.json").write_text(json.dumps({"steps": training.max_steps, "batch_size": training.batch_size,
                                                                      "learning_rate": training.learning_rate}))
        job = ExpertJobSpec(backbone=report.model.backbone, expert=expert,
                            data=train_data_spec(expert.domain, max_length=max_length, val_fraction=0.05),
                            training=training, tracking=TrackingSpec(root=str(work / "mlruns")), output_dir=str(work / "experts"))
        trained = train_expert(job)
        model.push_expert(load_expert(trained.blob_path, backbone, sha256=trained.entry.sha256))
    save_artifact(model, str(root), router_spec(mapping={d: {d: 1.0} for d in DOMAINS_USED}))
    train_bench_planner(work, root)
    return root


def ensure_router(root: Path) -> None:
    """The artifact's learned router, trained (`ccoe router train`, default settings) when it has none
    or one that does not know composed queries: the gate the pipeline would put beside a planner."""
    from ccoe.cli import main as cli

    entry = read_manifest(root).learned_router
    if entry is None or PLANNER_DOMAIN not in entry.domains:
        if cli(["router", "train", "--artifact", str(root)]) != 0:
            raise SystemExit("ccoe router train failed on the benchmark artifact")


def train_bench_planner(work: Path, root: Path) -> None:
    """The planner of configs/planner.yaml, trained for the artifact's experts and pushed into it;
    its training time and data sizes go to `work/planner.json` for the report."""
    spec = load_yaml(PlannerSpec, ROOT / "configs" / "planner.yaml")
    started = time.perf_counter()
    done = train_planner(str(root), spec, tracking=TrackingSpec(root=str(work / "mlruns")), progress=lambda line: print(line, file=sys.stderr))
    (work / "planner.json").write_text(json.dumps({"seconds": time.perf_counter() - started, "composed_rows": done.composed_rows,
                                                   "single_rows": done.single_rows, "metrics": done.entry.metrics}))


def timed(fn: Callable[[], list]) -> tuple[list, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def batched(fn: Callable[[list], list], items: Sequence, size: int) -> list:
    out = []
    for start in range(0, len(items), size):
        out += fn(list(items[start:start + size]))
        print(f"  {min(start + size, len(items))}/{len(items)}", file=sys.stderr)
    return out


def rate(scores: Sequence[float]) -> dict:
    k, n = int(sum(scores)), len(scores)
    low, high = clopper_pearson(k, n)
    return {"k": k, "n": n, "rate": k / n, "low": low, "high": high}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "planning.md")
    p.add_argument("--work", type=Path, default=ROOT / "out" / "bench-planning")
    p.add_argument("--composed", type=int, default=80)
    p.add_argument("--single", type=int, default=20, help="held-out items per domain for the single-domain check")
    p.add_argument("--calculator", action=argparse.BooleanOptionalAction, default=True,
                   help="every system decodes its non-SQL rows with the calculator (ccoe.calculator), as planned math steps do")
    p.add_argument("--batch", type=int, default=4, help="rows per batch: on 2 CPU cores decoding is compute-bound from ~4 rows, and a batch runs as long as its longest row")
    p.add_argument("--sql-steps", type=int, default=240, help="training steps of the sql expert (the others: configs/domain-experts.yaml)")
    p.add_argument("--retrain-planner", action="store_true", help="train the planner of an existing --work artifact again (its experts are kept)")
    p.add_argument("--single-only", action="store_true",
                   help="run only the single-domain check and put its rows into the existing --out report")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    root = build_artifact(args.work, args.retrain_planner, args.sql_steps)
    ensure_router(root)
    model, router, manifest = load_artifact(str(root))
    tokenizer = model.backbone.tokenizer
    setup = planning_setup({n: e.domain for n, e in manifest.experts.items()}, expert_mapping(manifest))
    spec = load_yaml(PlannerSpec, ROOT / "configs" / "planner.yaml")
    trained_queries = {t.query for t in composed_tasks(spec.seed, spec.composed)}
    tasks: list[ComposedTask] = composed_tasks(1000, args.composed, exclude=trained_queries)
    queries = [t.query for t in tasks]
    tools = default_tools()
    tools = {**tools, "math": replace(tools["math"], calculator=args.calculator), None: StepTool(calculator=args.calculator)}
    routable = list(manifest.routable_experts())

    decisions: dict[str, RouteDecision] = {}

    def decide(prompts: Sequence[str]) -> list[RouteDecision]:
        """The gate's decisions, each query routed once (routing costs the same for every system)."""
        todo = [q for q in dict.fromkeys(prompts) if q not in decisions]
        decisions.update(zip(todo, router.route_many(todo, available=routable)))
        return [decisions[q] for q in prompts]

    def route(query: str) -> tuple[str | None, str | None]:
        decision = decide([query])[0]
        return decision.domain, decision.expert

    def settled(prompts: Sequence[str]) -> list[Plan | None]:
        """What the router settles before the planner runs (what `plan_and_run` does)."""
        return router_plans(decide(prompts)) if router.detects_composed else [None] * len(prompts)

    def run(prompts: list[str], plans: list[Plan]) -> tuple[list, float]:
        return timed(lambda: batched(lambda rows: execute_plans(model, tokenizer, [q for q, _ in rows], [p for _, p in rows], tools),
                                     list(zip(prompts, plans)), args.batch))

    if args.single_only:
        record = json.loads(args.out.with_suffix(".json").read_text())
        record["single_domain"] = [single_domain(model, tokenizer, setup, route, settled, tools, domain, args) for domain in DOMAINS_USED]
        record["single_domain_cpu"] = cpu_name()
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
        args.out.write_text(report(record))
        print(args.out.read_text())
        return
    cache: dict[tuple[str, str | None], tuple[PlanResult, float]] = {}

    def one_step(prompts: list[str], experts: Sequence[str | None]) -> tuple[list[PlanResult], float]:
        """The whole prompt to one expert each: runs what is not cached yet; a (prompt, expert) pair is
        generated once (greedy decoding gives the same result whichever system asks), and each result
        carries its share of the batch's seconds."""
        missing = list(dict.fromkeys((q, e) for q, e in zip(prompts, experts) if (q, e) not in cache))
        plans = [single_step(manifest.experts[e].domain if e else None, e, "given", None) for _, e in missing]
        results, seconds = run([q for q, _ in missing], plans)
        for key, result in zip(missing, results):
            cache[key] = (result, seconds / max(1, len(missing)))
        picked = [cache[(q, e)] for q, e in zip(prompts, experts)]
        return [r for r, _ in picked], sum(t for _, t in picked)

    def planned(prompts: list[str], plans: list[Plan]) -> tuple[list[PlanResult], float]:
        """Plans of one step without a task are the one-step runs above; the rest run as plans."""
        whole = [i for i, p in enumerate(plans) if len(p.steps) == 1 and p.steps[0].task is None]
        rest = [i for i in range(len(plans)) if i not in set(whole)]
        out: list[PlanResult | None] = [None] * len(plans)
        cached, cached_s = one_step([prompts[i] for i in whole], [plans[i].steps[0].expert for i in whole])
        ran, ran_s = run([prompts[i] for i in rest], [plans[i] for i in rest])
        for i, result in zip(whole, cached):
            out[i] = PlanResult(result.query, plans[i], result.answer, result.steps, result.text)
        for i, result in zip(rest, ran):
            out[i] = result
        return out, cached_s + ran_s

    def right(results: list[PlanResult]) -> list[float]:
        answers = [final_number(r.text) if r.plan.steps[0].domain is None and len(r.plan.steps) == 1 else r.answer for r in results]
        return [float(a == t.answer) for a, t in zip(answers, tasks)]

    systems: dict[str, dict] = {}
    routed_to = [route(q)[1] for q in queries]
    for name, experts in [("base", [None] * len(queries)), ("sql only", ["sql"] * len(queries)), ("math only", ["math"] * len(queries)),
                          ("routed", routed_to)]:
        print(f"{name} ...", file=sys.stderr)
        results, seconds = one_step(queries, experts)
        systems[name] = {"scores": right(results), "seconds": seconds}
    print("planned ...", file=sys.stderr)
    plans, plan_s = timed(lambda: batched(lambda qs: plan_queries(model, tokenizer, qs, setup, route, decided=settled(qs)), queries, args.batch))
    results, run_s = planned(queries, plans)
    systems["planned"] = {"scores": right(results), "seconds": plan_s + run_s, "plan_seconds": plan_s}
    print("gold plan ...", file=sys.stderr)
    gold = [Plan(tuple(PlanStep(d, setup.experts[d], task) for d, task in t.steps), source="given") for t in tasks]
    differs = [i for i, (p, g) in enumerate(zip(plans, gold)) if p.steps != g.steps]  # the others ran above, as planned
    ran, gold_s = run([queries[i] for i in differs], [gold[i] for i in differs])
    gold_results = list(results)
    for i, result in zip(differs, ran):
        gold_results[i] = result
    gold_s += run_s * (len(tasks) - len(differs)) / len(tasks)
    systems["gold plan"] = {"scores": right(gold_results), "seconds": gold_s}
    plan_exact = [float(p.source == "planner" and [(s.domain, s.task) for s in p.steps] == list(t.steps)) for p, t in zip(plans, tasks)]
    plan_domains = [float([s.domain for s in p.steps] == [d for d, _ in t.steps]) for p, t in zip(plans, tasks)]
    sql_step = [float(r.steps[0].answer == str(t.count)) for r, t in zip(gold_results, tasks)]
    math_step_given_sql = [float(r.answer == t.answer) for r, t, ok in zip(gold_results, tasks, sql_step) if ok]

    single_rows = [single_domain(model, tokenizer, setup, route, settled, tools, domain, args) for domain in DOMAINS_USED]

    best = max(("base", "routed", "sql only", "math only"), key=lambda s: sum(systems[s]["scores"]))
    diff = paired_difference(systems["planned"]["scores"], systems[best]["scores"], binary=True)
    record = {
        "cpu": cpu_name(), "n": len(tasks), "calculator": args.calculator, "planner": json.loads((args.work / "planner.json").read_text()),
        "budgets": {d: json.loads((args.work / f"{d}-budget.json").read_text()) for d in DOMAINS_USED if (args.work / f"{d}-budget.json").is_file()},
        "systems": {name: {**rate(s["scores"]), "seconds_per_task": s["seconds"] / len(tasks)} for name, s in systems.items()},
        "plan_seconds_per_task": systems["planned"]["plan_seconds"] / len(tasks),
        "best_single": best, "planned_minus_best": diff.text(), "planned_minus_best_low": diff.low,
        "plan_exact": rate(plan_exact), "plan_domains": rate(plan_domains),
        "fallbacks": sum(p.source == "fallback" for p in plans), "routed_to": {e or "backbone": routed_to.count(e) for e in set(routed_to)},
        "gate": type(router).__name__, "flagged_composed": sum(d.composed for d in decide(queries)),
        "settled_by_router": sum(p.source == "router" for p in plans),
        "sql_step": rate(sql_step), "math_step_given_sql": rate(math_step_given_sql) if math_step_given_sql else None,
        "single_domain": single_rows,
        "examples": [results[i].as_dict() for i in range(min(2, len(results)))],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
    args.out.write_text(report(record))
    print(args.out.read_text())


def single_domain(model, tokenizer, setup, route, settled, tools, domain: str, args) -> dict:
    """A domain's held-out queries three ways, on the same batches of `--batch`, the three runs of a
    batch in rotating order so that drifts of the machine's speed fall on all three alike:
    - routed: the gate's expert answers the whole query;
    - planned: what `plan_and_run` does: the learned router settles what it can (`router_plans`),
      the planner plans the rest, prompt states shared (`ccoe.prompt_states`);
    - planner for all: the planner plans every query (prompt states shared), as before the router
      knew composed queries.
    Routing is done once per query before the runs and is the same for all three (not timed here).
    Answers of the two planned runs must agree where both made the same plan (greedy)."""
    items = eval_items(domain)[: args.single]
    prompts = [item["prompt"] for item in items]
    print(f"single-domain {domain} ...", file=sys.stderr)
    routes = {q: route(q) for q in prompts}
    seconds = {"routed": 0.0, "planned": 0.0, "planned_plan": 0.0, "everyone": 0.0, "everyone_plan": 0.0}
    texts: dict[str, list[str]] = {"routed": [], "planned": [], "everyone": []}
    plans_seen: dict[str, list[Plan]] = {"planned": [], "everyone": []}
    hits = 0

    def routed(batch):
        plans = [single_step(*routes[q], "given", None) for q in batch]
        return [r.text for r in execute_plans(model, tokenizer, batch, plans, tools)], 0.0, plans

    def planned(batch, first: bool):
        nonlocal hits
        states = shared_states(model, [setup.planner, *setup.experts.values()])
        decided = settled(batch) if first else None
        plans, plan_s = timed(lambda: plan_queries(model, tokenizer, batch, setup, route, states=states, decided=decided))
        results = execute_plans(model, tokenizer, batch, plans, tools, states=states)
        hits += states.hits if states is not None and not first else 0
        return [r.text for r in results], plan_s, plans

    runs = {"routed": routed, "planned": lambda b: planned(b, True), "everyone": lambda b: planned(b, False)}
    for number, start in enumerate(range(0, len(prompts), args.batch)):
        batch = prompts[start:start + args.batch]
        names = list(runs)[number % 3:] + list(runs)[: number % 3]
        for name in names:
            (out, plan_s, plans), total = timed(lambda: runs[name](batch))
            seconds[name] += total
            texts[name] += out
            if name != "routed":
                seconds[f"{name}_plan"] += plan_s
                plans_seen[name] += plans
        print(f"  {min(start + args.batch, len(prompts))}/{len(prompts)}", file=sys.stderr)
    scorer = DOMAINS[domain]
    routed_scores = [scorer.score(item, t) for item, t in zip(items, texts["routed"])]
    planned_scores = [scorer.score(item, t) for item, t in zip(items, texts["planned"])]
    everyone_scores = [scorer.score(item, t) for item, t in zip(items, texts["everyone"])]
    n, mine, old = len(items), plans_seen["planned"], plans_seen["everyone"]
    return {
        "domain": domain, "n": n, "routed": rate(routed_scores), "planned": rate(planned_scores), "everyone": rate(everyone_scores),
        "diff": paired_difference(planned_scores, routed_scores, binary=True).text(),
        "one_step": sum(len(p.steps) == 1 for p in mine), "fallbacks": sum(p.source == "fallback" for p in mine),
        "planned_to_domain": sum(len(p.steps) == 1 and p.steps[0].domain == domain for p in mine),
        "planner_calls": sum(p.source != "router" for p in mine), "everyone_one_step": sum(len(p.steps) == 1 for p in old),
        "reused_prompts": hits,
        "same_answers": sum(a == b for a, b, p, q in zip(texts["planned"], texts["everyone"], mine, old) if p.steps == q.steps),
        "same_plans": sum(p.steps == q.steps for p, q in zip(mine, old)),
        "routed_s": seconds["routed"] / n, "planned_s": seconds["planned"] / n, "plan_s": seconds["planned_plan"] / n,
        "everyone_s": seconds["everyone"] / n, "everyone_plan_s": seconds["everyone_plan"] / n,
    }


def report(r: dict) -> str:
    pct = lambda s: f"{s['k']}/{s['n']} ({s['rate']:.1%}) [{s['low']:.1%}, {s['high']:.1%}]"
    planner = r["planner"]
    lines = [
        "## Planning: composed tasks (collaboration of experts)", "",
        f"Measured on {r['cpu']}, SmolLM2-135M-Instruct, greedy. math and sql experts with the budgets of "
        "configs/domain-experts.yaml" + "".join(f", {d} {b['steps']} steps x {b['batch_size']}" for d, b in r.get("budgets", {}).items())
        + "; the planner (configs/planner.yaml) trained in "
        f"{planner['seconds']:.0f} s on {planner['composed_rows']} composed + {planner['single_rows']} one-step plans. "
        f"{r['n']} composed tasks (a Chinook count feeds a math word problem; seed 1000, none of them a planner training query). "
        "Accuracy = exact final answer; 95% Clopper-Pearson intervals. "
        + ("Every system decodes its non-SQL rows with the calculator (`ccoe.calculator`: the value after each "
           "`<arithmetic> =` is written for the model), as planned math steps do." if r.get("calculator")
           else "No calculator (`--no-calculator`)."), "",
        "| system | right | s per task |", "|---|---|---|",
    ]
    for name, s in r["systems"].items():
        lines.append(f"| {name} | {pct(s)} | {s['seconds_per_task']:.2f} |")
    met = r["planned_minus_best_low"] > 0
    lines += [
        "", f"Planned minus the best single system ({r['best_single']}), paired: {r['planned_minus_best']}. "
        f"Goal \"planning beats the best single expert significantly\": **{'met' if met else 'missed'}**.", "",
        f"- Plans: exactly the gold steps {pct(r['plan_exact'])}; the right domains in the right order {pct(r['plan_domains'])}; "
        f"{r['fallbacks']} fell back to routing. Planning costs {r['plan_seconds_per_task']:.2f} s per task.",
        f"- Where it fails (gold plan): the SQL step returns the right count {pct(r['sql_step'])}; given that, the math step is right "
        + (pct(r['math_step_given_sql']) if r["math_step_given_sql"] else "(no case)") + ".",
        f"- The gate ({r.get('gate', 'RuleRouter')}) sent the composed queries as one expert to "
        + ", ".join(f"{k} {v}" for k, v in sorted(r["routed_to"].items())) + "."
        + (f" Its learned router judged {r['flagged_composed']}/{r['n']} of them composed (class `planning`): those went to the planner; "
           f"it settled {r['settled_by_router']} itself." if "flagged_composed" in r else ""), "",
        "Single-domain queries (held-out sets): planning must not lower accuracy, and must cost no more than routing. "
        "Planned = what `plan_and_run` does: the learned router settles the queries it puts in one domain (`router_plans`), "
        "the planner plans the rest; planner for all = the planner plans every query (before the router knew composed queries).", "",
        "| domain | n | routed | planned | planned - routed | planner calls | s per query: routed / planned (planning) / planner for all (planning) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["single_domain"]:
        lines.append(f"| {row['domain']} | {row['n']} | {pct(row['routed'])} | {pct(row['planned'])} | {row['diff']} | "
                     f"{row['planner_calls']}/{row['n']} ({row['planned_to_domain']} one-step plans to {row['domain']}, {row['fallbacks']} fallbacks) | "
                     f"{row['routed_s']:.2f} / {row['planned_s']:.2f} ({row['plan_s']:.2f}) / {row['everyone_s']:.2f} ({row['everyone_plan_s']:.2f}) |")
    kept = all(row["planned"]["k"] >= row["routed"]["k"] for row in r["single_domain"])
    overhead = max(row["planned_s"] / row["routed_s"] - 1 for row in r["single_domain"])
    before = max(row["everyone_s"] / row["routed_s"] - 1 for row in r["single_domain"])
    calls = sum(row["planner_calls"] for row in r["single_domain"])
    total = sum(row["n"] for row in r["single_domain"])
    same = ", ".join(f"{row['domain']} {row['same_answers']}/{row['same_plans']}" for row in r["single_domain"])
    cheap = calls == 0 or overhead <= 0
    lines += ["", f"Goal \"planning does not lower single-domain accuracy\": **{'met' if kept else 'missed'}**. "
              f"Goal \"a single-domain query costs no more than routing\": **{'met' if cheap else 'missed'}**: "
              f"the planner ran for {calls}/{total} of them"
              + (" (the others the learned router planned as one step to its own expert: the routed call itself, so they cost "
                 "exactly what routing costs)" if calls < total else "")
              + f"; measured, planned minus routed is at most {overhead:+.1%} of the routed call's time, against {before:+.0%} "
              f"when the planner plans every query. Answers of the two planned runs where they made the same plan: {same}. "
              "The three runs of each batch ran back to back in rotating order"
              + (f", on {r['single_domain_cpu']}, with an artifact rebuilt from the same configs (the composed rows above"
                 " are from the earlier run)." if r.get("single_domain_cpu") else ".")]
    example = r["examples"][0]
    lines += ["", "One planned task, as `ccoe generate --plan --json` prints it (trimmed):", "", "```json",
              json.dumps({"query": example["query"], "answer": example["answer"], "plan": example["plan"]["steps"],
                          "trace": [{k: s[k] for k in ("step", "expert", "completion", "answer")} for s in example["trace"]]},
                         indent=1, ensure_ascii=False), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
