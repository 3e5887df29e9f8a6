"""The pipeline's steps as plain functions (the Prefect flows only wire them together).

Each step hands the next a typed result:

1. `plan_jobs` -> `PlannedJob`s: one `ExpertJobSpec` per expert, carrying the data fingerprint the
   planner computed and the pipeline's blob store; a job whose fingerprint equals the champion's
   entry for that expert is skipped (scheduled continual updates retrain only what changed).
2. training (`lightning_modules.train.train_expert`, one process per job) -> `TrainedExpert`: the
   trainer refuses data whose fingerprint changed since planning, puts its blob into the blob store
   and returns the expert's manifest entry.
3. `merge_results(TrainedExpert...)` -> `registry.MergeResult`: pop-and-push of the entries into the
   registry as `candidate`; no bytes move and no model loads.
4. `evaluate_candidate` -> `Evaluation` (frozen, with the gate's `GateDecision`): base, champion and
   candidate on every domain, per item (loss, task metric; a custom domain: NLL on its own validation
   split), all routes of a domain in one shared-prefix pass; router accuracy; the gate's paired
   evidence per domain.
5. `apply_decision(Evaluation)`: the decision goes to the version's tags and description; `champion`
   moves (forward only) on success, a refused candidate is tagged `rejected`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ccoe.artifact import fetch_blob, router_from_manifest
from ccoe.backbone import load_backbone
from ccoe.config import (
    DataSpec, ExpertInit, ExpertJobSpec, ExpertPlan, ExpertSpec, PipelineSpec, RouterSpec, TrainingOverrides,
)
from ccoe.data import data_fingerprint, load_records, to_examples, validation_items
from ccoe.domains import DOMAINS, eval_items, labelled_routing_queries, router_spec, train_data_spec
from ccoe.evaluate import evaluate_domain, evaluate_loss
from ccoe.expert import expert_from_bytes
from ccoe.gate import DomainScores, GateDecision, RoutingScores, decide, evidence_rows
from ccoe.manifest import PLANNER_DOMAIN, BackboneEntry, LearnedRouterEntry, Manifest, TrainedExpert, blob_store_for
from ccoe.model import CCoEModel
from ccoe.planning import evaluate_plans
from ccoe.router import RuleRouter, expert_for
from ccoe.storage import BlobStore


@dataclass(frozen=True)
class PlannedJob:
    """One expert's job, or why there is none; `note` says what a continual update trains on."""

    plan: ExpertPlan
    job: ExpertJobSpec | None
    data_fingerprint: str | None
    skip_reason: str | None = None
    error: str | None = None
    note: str | None = None


def shard_format(spec: PipelineSpec, plan: ExpertPlan) -> DataSpec:
    """How a sharded expert's rows become examples: the plan's `data` (its source unread), or a
    built-in domain's fields (prompt/response; options and answer for multiple choice)."""
    if plan.data is not None:
        return plan.data
    choice = {"choices_field": "choices", "answer_field": "answer"} if plan.expert.domain in DOMAINS and DOMAINS[plan.expert.domain].task == "choice" else {}
    return DataSpec(records=[], max_length=spec.max_length, val_fraction=0.05, **choice)


def data_for(spec: PipelineSpec, plan: ExpertPlan) -> DataSpec:
    if plan.data is not None:
        return plan.data
    if plan.expert.domain not in DOMAINS:
        raise ValueError(f"expert {plan.expert.name!r} has no `data` and {plan.expert.domain!r} is not a built-in domain {sorted(DOMAINS)}")
    return train_data_spec(plan.expert.domain, max_length=spec.max_length, val_fraction=0.05)


def custom_prompts(spec: PipelineSpec) -> dict[str, list[str]]:
    """Training prompts of the pipeline's domains that are not built in (from their experts' `data`):
    what the planner and the learned router learn those domains from."""
    given: dict[str, list[str]] = {}
    for plan in spec.experts:
        if plan.expert.domain not in DOMAINS and plan.data is not None:
            given.setdefault(plan.expert.domain, []).extend(e.prompt for e in to_examples(load_records(plan.data), plan.data))
    return given


def planner_plan(spec: PipelineSpec) -> ExpertPlan | None:
    """The planner as one more expert of the pipeline (domain PLANNER_DOMAIN): its data are the plans
    for the pipeline's experts (`ccoe.domains.composed.planner_training_rows`), in a content-addressed
    file of the data cache like the domains' prepared splits, 5% held out for the gate's loss; its
    training is the PlannerSpec's whole TrainingSpec. None without `spec.planner`."""
    if spec.planner is None:
        return None
    from ccoe.domains.composed import planner_data_file, planner_training_rows

    rows = planner_training_rows([p.expert.domain for p in spec.experts], spec.planner, custom_prompts(spec))
    return ExpertPlan(
        expert=ExpertSpec(name=spec.planner.name, domain=PLANNER_DOMAIN, layers=spec.planner.layers),
        data=DataSpec(source=str(planner_data_file(rows)), max_length=spec.planner.max_length, val_fraction=0.05),
        training=TrainingOverrides.model_validate(spec.planner.training.model_dump()),
    )


def all_plans(spec: PipelineSpec) -> list[ExpertPlan]:
    """The pipeline's expert plans, and the planner's last when it has one."""
    planner = planner_plan(spec)
    return [*spec.experts, *([planner] if planner is not None else [])]


def plan_jobs(spec: PipelineSpec, champion: Manifest | None, only: list[str] | None = None) -> list[PlannedJob]:
    """Jobs for the experts (and planner) named in `only` (default: all), with skip decisions for unchanged data.

    An expert whose data cannot be read gets `error` instead of a job, so it fails alone.
    """
    planned, plans = [], all_plans(spec)
    for plan in plans:
        if only is not None and plan.expert.name not in only:
            continue
        if plan.shards is not None:
            planned.append(_plan_sharded(spec, plan, champion))
            continue
        data = data_for(spec, plan)
        try:
            fingerprint = data_fingerprint(to_examples(load_records(data), data))
        except (ValueError, FileNotFoundError, KeyError) as err:  # this expert fails; the others go on
            planned.append(PlannedJob(plan, None, None, error=f"{type(err).__name__}: {err}"))
            continue
        entry = champion.experts.get(plan.expert.name) if champion is not None else None
        skip = None
        if spec.skip_unchanged and entry is not None and entry.data_fingerprint == fingerprint:
            skip = f"data unchanged since the champion (fingerprint {fingerprint[:12]}…): not retrained"
        init, note = _init(spec, plan, champion)
        planned.append(PlannedJob(plan, spec.job(plan, data, fingerprint, init=init), fingerprint, skip, note=note))
    unknown = sorted(set(only or []) - {p.plan.expert.name for p in planned})
    if unknown:
        raise KeyError(f"unknown experts {unknown}; the pipeline defines {[p.expert.name for p in plans]}")
    return planned


def _init(spec: PipelineSpec, plan: ExpertPlan, champion: Manifest | None) -> tuple[ExpertInit | None, str | None]:
    """Where a job starts (None: the backbone's layers) and the line that says so for `init: champion`.
    The parent blob is read from the pipeline's own blob store, which the champion's manifest must name
    (`blob_store_for` refuses a manifest pointing elsewhere)."""
    entry = champion.experts.get(plan.expert.name) if champion is not None else None
    if plan.init != "champion":
        return None, None
    if entry is None:
        return None, "init champion: the champion has no expert of this name to continue from, so it starts from the backbone"
    store = blob_store_for(champion, None, spec.storage)
    return ExpertInit(sha256=entry.sha256, storage=store.spec), f"continuing from the champion's expert {entry.sha256[:12]}…"


def _plan_sharded(spec: PipelineSpec, plan: ExpertPlan, champion: Manifest | None) -> PlannedJob:
    """A continual update's job (`ccoe.continual`): skipped when no shard is new since the champion's
    expert; otherwise the new shards (and replay, when continuing) as a content-addressed data file."""
    from ccoe.continual import plan_shards, selection_file

    entry = champion.experts.get(plan.expert.name) if champion is not None else None
    template = shard_format(spec, plan)
    init, init_note = _init(spec, plan, champion)
    try:
        shards = plan_shards(plan.shards, template, entry.shards if entry is not None else [], init is not None)
    except (ValueError, FileNotFoundError, KeyError, OSError) as err:  # this expert fails; the others go on
        return PlannedJob(plan, None, None, error=f"{type(err).__name__}: {err}")
    if entry is not None and not shards.new and (spec.skip_unchanged or init is not None):
        skip = f"no new shards since the champion's expert ({len(entry.shards)} seen, {len(shards.shards)} in {plan.shards.location.uri}): not retrained"
        return PlannedJob(plan, None, None, skip)
    data = template.model_copy(update={"source": str(selection_file(shards.records)), "records": None})
    fingerprint = data_fingerprint(to_examples(load_records(data), data))
    job = spec.job(plan, data, fingerprint, init=init, shards=list(shards.lineage))
    return PlannedJob(plan, job, fingerprint, note="; ".join(filter(None, [shards.summary(), init_note])))


def pipeline_router(spec: PipelineSpec) -> RouterSpec:
    if spec.router is not None:
        return spec.router
    names = {p.expert.domain: p.expert.name for p in spec.experts}
    return router_spec(mapping={name: {domain: 1.0} for domain, name in names.items() if domain in DOMAINS})


def train_pipeline_router(spec: PipelineSpec, trained: list[TrainedExpert], champion: Manifest | None) -> LearnedRouterEntry | None:
    """The learned router for the pipeline's domain experts, staged in its blob store; None (the
    base's is kept) without `spec.learned_router`, or when only the planner was trained and the
    champion's router already fits these experts (and has the class PLANNER_DOMAIN exactly when it
    should: a planner and sql and math experts). Why retrain when a domain expert was: its
    training prompts, which the router learns from, may have changed with it."""
    if spec.learned_router is None:
        return None
    from ccoe.domains.general import learns_composed, router_examples

    settings = spec.learned_router
    experts = {p.expert.name: p.expert.domain for p in spec.experts}
    planning = spec.planner is not None or (champion is not None and any(e.domain == PLANNER_DOMAIN for e in champion.experts.values()))
    entry = champion.learned_router if champion is not None else None
    current = (entry is not None and sorted(entry.experts) == sorted(experts)
               and (PLANNER_DOMAIN in entry.domains) == learns_composed(experts.values(), settings, planning))
    if current and all(t.entry.domain == PLANNER_DOMAIN for t in trained):
        return None
    from ccoe.artifact import stage_router
    from ccoe.learned_router import SentenceEncoder, domain_prompts, train_learned_router, training_set

    examples = router_examples(experts.values(), settings, planning=planning)
    data = training_set(domain_prompts(experts.values(), custom_prompts(spec)), examples.general, settings, examples.extra, examples.composed)
    fit = train_learned_router(SentenceEncoder(), data, settings)
    metrics = {"validation_accuracy": fit.validation_accuracy, "train_accuracy": fit.train_accuracy, "validation_n": fit.validation_n}
    return stage_router(BlobStore(spec.storage), fit.router, experts, metrics)


def merge_results(spec: PipelineSpec, trained: list[TrainedExpert], pops: list[str] = (), learned_router: LearnedRouterEntry | None = None):
    """Push trained experts into the registry as `candidate`. Their blobs are already in the pipeline's
    blob store (each job put its own there), so the merge moves no bytes and loads no model: the bare
    manifest takes its backbone fingerprint from the experts, which must agree. `learned_router`
    (from `train_pipeline_router`) replaces the base's."""
    from ccoe import registry

    elsewhere = sorted(t.name for t in trained if t.stored_in != spec.storage)
    if elsewhere:
        raise ValueError(f"experts {elsewhere} were not put into this pipeline's blob store {spec.storage.uri}; retrain them here")
    fingerprints = {t.entry.backbone_fingerprint for t in trained}
    if len(fingerprints) != 1:
        raise ValueError(f"the trained experts disagree on the backbone ({len(fingerprints)} fingerprints); retrain them together")
    bare = Manifest(backbone=BackboneEntry(spec=spec.backbone, fingerprint=fingerprints.pop()), storage=spec.storage)
    return registry.merge_and_register(
        spec.registry, BlobStore(spec.storage), bare=bare, entries={t.name: t.entry for t in trained}, pops=pops,
        router=pipeline_router(spec), learned_router=learned_router,
    )


def _expert_for(manifest: Manifest | None, domain: str) -> str | None:
    """The expert that serves `domain` in this manifest: the one its router's mapping matrix weights
    highest for the domain (what a routed request gets), else the domain's only expert."""
    if manifest is None:
        return None
    own = sorted(n for n, e in manifest.experts.items() if e.domain == domain)
    if manifest.router is not None:
        expert, _ = expert_for(domain, manifest.router.mapping, manifest.experts)  # routing's own choice, ties included
        if expert is not None:
            return expert
    if len(own) > 1:
        raise ValueError(f"domain {domain!r} has experts {own} and no router mapping says which one serves it")
    return own[0] if own else None


@dataclass(frozen=True)
class Evaluation:
    """Scores of one candidate version against the base and the champion, and the gate's decision."""

    version: int
    champion_version: int | None
    scores: dict[str, DomainScores]
    router_accuracy: float
    retrained: tuple[str, ...]
    decision: GateDecision
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per evaluated domain, and "routing"

    @property
    def rows(self) -> list[dict]:
        return evidence_rows(self.scores, self.decision)


def held_out_items(spec: PipelineSpec, domain: str) -> tuple[list[dict], DataSpec | None]:
    """A domain's evaluation items and how to encode them: a built-in domain's held-out set (cut to
    `eval.max_items`), or for a custom domain the validation split of its experts' `data` (the split
    the trainer held out, so never trained on). ([], None) when there is nothing held out."""
    if domain in DOMAINS:
        return eval_items(domain)[: spec.eval.max_items.get(domain)], DataSpec(records=[], max_length=spec.eval.max_length)
    for plan in [planner_plan(spec)] if domain == PLANNER_DOMAIN and spec.planner is not None else spec.experts:
        if plan.expert.domain == domain and plan.shards is None and plan.data is not None and plan.data.val_fraction > 0:
            return validation_items(plan.data, spec.eval.max_items.get(domain)), plan.data
    return [], None


def evaluate_candidate(spec: PipelineSpec, version: int, retrained: list[str], progress: bool = False,
                       report: Callable[[str], None] | None = None) -> Evaluation:
    """Scores of base, champion and candidate per domain (experts shared by both are scored once), and
    the gate's decision on them. `report` receives a line as each domain starts and ends (the flow
    passes its logger, so a person sees the evaluation move); `progress` draws per-batch bars.

    Experts keep their manifest names in the scoring model; a champion expert whose name the
    candidate uses for a different blob is loaded as `<name>-champion`."""
    from ccoe import registry

    say = report or (lambda line: None)

    candidate = registry.get_version(spec.registry, version)
    champion = registry.get_version(spec.registry, "champion")
    manifests = {"candidate": candidate.manifest, "champion": champion.manifest if champion else None}
    backbone_spec = candidate.manifest.backbone.spec
    if spec.eval.dtype:
        backbone_spec = backbone_spec.model_copy(update={"dtype": spec.eval.dtype})
    backbone = load_backbone(backbone_spec, device=spec.eval.device)
    model, routes_by_sha = CCoEModel(backbone, grouped_layers=spec.eval.grouped_layers), {}
    for label, manifest in manifests.items():
        if manifest is None:
            continue
        store = blob_store_for(manifest, None, spec.storage)
        for name, entry in manifest.experts.items():
            if entry.sha256 not in routes_by_sha:
                route_name = name if name not in model.experts else f"{name}-{label}"
                model.push_expert(expert_from_bytes(fetch_blob(store, entry), backbone, sha256=entry.sha256, name=route_name))
                routes_by_sha[entry.sha256] = route_name
    served = {e.domain for m in filter(None, manifests.values()) for e in m.experts.values()}
    scores: dict[str, DomainScores] = {}
    seconds: dict[str, float] = {}
    for number, domain in enumerate(sorted(served), 1):
        items, encoding = held_out_items(spec, domain)
        if not items:
            say(f"not evaluating {domain} as a whole ({number}/{len(served)}): no scorer and no held-out split of its own")
            continue
        route = _routes(manifests, routes_by_sha, domain)
        say(f"evaluating {domain} ({number}/{len(served)}): {len(items)} items, routes base, "
            f"champion={route['champion'] or 'base'}, candidate={route['candidate'] or 'base'}")
        held = HeldOutSet(domain, items, encoding, metric=domain in DOMAINS)
        scores[domain], seconds[domain] = _score(spec, model, backbone.tokenizer, domain, held, route, champion is not None, progress)
        _say_scored(say, scores[domain], len(items), seconds[domain])
    retrained_domains = {candidate.manifest.experts[name].domain for name in retrained if name in candidate.manifest.experts}
    for name in retrained:
        sets = shard_sets(spec, name, candidate.manifest, champion.manifest if champion else None)
        if sets:  # a continual update: judged on its new shards; its domain and earlier shards must not regress
            retrained_domains.discard(candidate.manifest.experts[name].domain)
        for key, held in sets.items():
            route = _routes(manifests, routes_by_sha, held.domain)
            say(f"evaluating {key}: {len(held.items)} held-out items of the shards")
            scores[key], seconds[key] = _score(spec, model, backbone.tokenizer, key, held, route, champion is not None, progress)
            _say_scored(say, scores[key], len(held.items), seconds[key])
            if key.endswith(NEW_SHARDS):
                retrained_domains.add(key)
    started = time.perf_counter()
    routing = routing_scores(spec, candidate.manifest, champion.manifest if champion else None)
    accuracy = sum(routing.candidate) / len(routing.candidate) if routing else 0.0
    seconds["routing"] = time.perf_counter() - started
    decision = decide(spec.gate, scores, retrained_domains, routing)
    return Evaluation(version, champion.version if champion else None, scores, accuracy, tuple(sorted(retrained)), decision, seconds)


NEW_SHARDS, EARLIER_SHARDS = ".new-shards", ".earlier-shards"


def _routes(manifests: dict[str, Manifest | None], routes_by_sha: dict[str, str], domain: str) -> dict[str, str | None]:
    """Per model label, the scoring model's route that serves `domain` (None: the plain backbone)."""
    return {label: (routes_by_sha[m.experts[n].sha256] if (n := _expert_for(m, domain)) else None) for label, m in manifests.items()}


@dataclass(frozen=True)
class HeldOutSet:
    """Items to score base, champion and candidate on: by the domain's task metric (`metric`), else on
    held-out NLL with `encoding`'s formatting."""

    domain: str
    items: list[dict]
    encoding: DataSpec
    metric: bool


def shard_sets(spec: PipelineSpec, name: str, candidate: Manifest, champion: Manifest | None) -> dict[str, HeldOutSet]:
    """The held-out sets of a continual update of expert `name`: `<domain>.new-shards` (the validation
    side of the shards its champion had not seen) and `<domain>.earlier-shards` (of those it had: the
    forgetting check). {} when the expert was not trained on shards.

    A built-in domain's rows are scored with its task metric when they carry the fields its scorer reads
    (the keys of its own held-out items); other rows on held-out NLL."""
    from ccoe.continual import held_out_rows

    entry = candidate.experts.get(name)
    plan = next((p for p in spec.experts if p.expert.name == name), None)
    if entry is None or not entry.shards or plan is None or plan.shards is None:
        return {}
    before = set(champion.experts[name].shards) if champion is not None and name in champion.experts else set()
    template = shard_format(spec, plan)
    sets = {}
    for suffix, shas in ((NEW_SHARDS, [s for s in entry.shards if s not in before]), (EARLIER_SHARDS, [s for s in entry.shards if s in before])):
        key = f"{entry.domain}{suffix}"
        items = held_out_rows(shas, template, spec.eval.max_items.get(key)) if shas else []
        if not items:
            continue
        scorer_fields = set(eval_items(entry.domain)[0]) if entry.domain in DOMAINS else None
        if scorer_fields is not None and all(scorer_fields <= set(item) for item in items):
            sets[key] = HeldOutSet(entry.domain, items, DataSpec(records=[], max_length=spec.eval.max_length), metric=True)
        else:
            pairs = [{"prompt": ex.prompt, "response": ex.response} for ex in to_examples(items, template)]
            sets[key] = HeldOutSet(entry.domain, pairs, template.model_copy(update={"prompt_field": "prompt", "response_field": "response",
                                                                                    "prompt_template": None, "response_template": None,
                                                                                    "choices_field": None}), metric=False)
    return sets


def _score(spec: PipelineSpec, model: CCoEModel, tokenizer, key: str, held: HeldOutSet, route: dict[str, str | None],
           has_champion: bool, progress: bool) -> tuple[DomainScores, float]:
    """Base, champion and candidate on the set's items in one shared-prefix pass (task metric or NLL);
    without a champion version, the champion's scores are None (the base is the reference)."""
    started, routes = time.perf_counter(), [None, route["champion"], route["candidate"]]
    if held.domain == PLANNER_DOMAIN:  # plan accuracy of the plans each model writes, primed as served
        result = evaluate_plans(model, tokenizer, held.items, routes, spec=held.encoding, batch_size=spec.eval.batch_size,
                                generation_batch_size=spec.eval.generation_batch_size,
                                max_new_tokens=spec.eval.max_new_tokens.get(PLANNER_DOMAIN, spec.planner.max_new_tokens if spec.planner else 192))
    elif held.metric:
        result = evaluate_domain(model, tokenizer, DOMAINS[held.domain], held.items, routes, spec=held.encoding,
                                 batch_size=spec.eval.batch_size, generation_batch_size=spec.eval.generation_batch_size,
                                 max_new_tokens=spec.eval.max_new_tokens.get(held.domain, 128), progress=progress)
    else:
        result = evaluate_loss(model, tokenizer, key, held.items, routes, spec=held.encoding, batch_size=spec.eval.batch_size)
    champion = result[route["champion"]] if has_champion else None
    return DomainScores(key, result[None], champion, result[route["candidate"]]), time.perf_counter() - started


def _say_scored(say: Callable[[str], None], scores: DomainScores, n: int, seconds: float) -> None:
    shown = "metric" if scores.base.metric is not None else "NLL"
    value = (lambda s: s.metric) if shown == "metric" else (lambda s: s.loss)
    say(f"  {scores.domain}: {shown} base {value(scores.base):.3f}, candidate {value(scores.candidate):.3f} on {n} items in {seconds:.0f} s")


def routing_scores(spec: PipelineSpec, candidate: Manifest, champion: Manifest | None) -> RoutingScores | None:
    """Each gate's 0/1 correctness on the labelled queries of the domains the candidate serves: the
    candidate's whole gate (the learned router when it is current, then the rules) against the
    champion's, or against the candidate's rules alone when there is no champion. None when the
    candidate serves none of the labelled domains."""
    served = {e.domain for e in candidate.routable_experts().values()}
    labelled = [(q, d) for q, d in labelled_routing_queries() if d in served]
    if not labelled:
        return None
    rules = RuleRouter(candidate.router or pipeline_router(spec))
    gate = router_from_manifest(candidate, blob_store_for(candidate, None, spec.storage)) or rules
    if champion is not None:
        reference, label = router_from_manifest(champion, blob_store_for(champion, None, spec.storage)) or rules, "champion"
    else:
        reference, label = rules, "rules"
    right = lambda router: tuple(float(router.route(q).domain == d) for q, d in labelled)  # noqa: E731
    return RoutingScores(label, right(gate), right(reference))


def apply_decision(spec: PipelineSpec, evaluation: Evaluation, run_id: str | None) -> None:
    """Record the decision on the version; promote to `champion` or mark the candidate `rejected`."""
    from ccoe import registry

    decision = evaluation.decision
    tags = {"ccoe.gate": "promoted" if decision.promote else "rejected", "ccoe.gate.reasons": decision.summary()[:4900]}
    if run_id:
        tags["ccoe.evaluation_run"] = run_id
    if not decision.promote:
        tags[registry.STATUS_TAG] = "rejected"
    registry.tag_version(spec.registry, evaluation.version, tags)
    registry.append_description(spec.registry, evaluation.version, markdown_report(evaluation))
    if decision.promote:
        registry.advance_alias(spec.registry, "champion", evaluation.version)


def markdown_report(evaluation: Evaluation) -> str:
    """The gate's evidence table: per domain each model's metric, the judged difference against the
    reference with its interval, n, the smallest difference n can detect, and the verdict."""
    lines = [f"## Gate decision for version {evaluation.version}: {'PROMOTED to champion' if evaluation.decision.promote else 'REJECTED'}", "",
             f"Champion before: {evaluation.champion_version or 'none (base backbone)'}; retrained: {', '.join(evaluation.retrained) or 'nothing'};"
             f" router accuracy on labelled queries: {evaluation.router_accuracy:.1%}", "",
             "| domain | base | champion | candidate | judged on | candidate - reference [95% CI] | n | detectable | outcome | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in evaluation.rows:
        judged = "-" if r["diff"] is None else f"{r['diff']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]"
        basis = {"metric": "metric", "loss": "NLL decrease", None: "-"}[r["basis"]]
        verdict = "ok" if r["ok"] else "FAILS"
        lines.append(f"| {r['domain']} | {fmt(r['base_metric'])} | {fmt(r['champion_metric'])} | {fmt(r['candidate_metric'])} | {basis} | "
                     f"{judged} vs {r['reference'] or '-'} | {r['n']} | {fmt(r['detectable'])} | {r['outcome']} | {verdict} |")
    lines += ["", *[f"- {reason}" for reason in evaluation.decision.reasons]]
    return "\n".join(lines)


def wall_split(timings: dict, total_s: float) -> dict[str, float]:
    """Seconds of a pipeline run's wall by phase, from `run_pipeline`'s timings: training (in-process
    seconds of the jobs; concurrent jobs count at most the training wall), merge, evaluation, and the
    rest = orchestration (Prefect, MLflow bookkeeping, process start-ups, imports)."""
    train = min(sum(timings["train_jobs_s"].values()), timings["train_wall_s"])
    return {"train_s": train, "merge_s": timings["merge_s"], "evaluate_s": timings["evaluate_s"],
            "orchestration_s": total_s - train - timings["merge_s"] - timings["evaluate_s"]}


def write_spec(spec: PipelineSpec, folder: str | Path) -> Path:
    path = Path(folder) / "pipeline.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    spec.to_yaml(path)
    return path
