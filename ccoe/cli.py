"""The `ccoe` command: prepare the offline backbone, build, inspect, route and generate from artifacts.

Commands import what they need when they run: `ccoe --help`, `ccoe route` (rules only) and `ccoe gc` load no tensor
library, so they answer in well under a second."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ccoe.config import CCoESpec, RouterSpec, load_yaml


def build_model(spec: CCoESpec, device: str = "cpu"):
    """Backbone + fresh experts (exact copies of their layers) from a CCoESpec."""
    from ccoe.backbone import load_backbone
    from ccoe.expert import expert_from_spec
    from ccoe.model import CCoEModel

    model = CCoEModel(load_backbone(spec.backbone, device=device))
    for expert_spec in spec.experts:
        model.push_expert(expert_from_spec(model.backbone, expert_spec))
    return model


def describe(model, manifest=None) -> dict:
    """Backbone, experts, layers and bytes of a loaded model, as plain data."""
    sizes = model.parameter_bytes()
    config = model.backbone.config
    experts = {}
    for name, expert in model.experts.items():
        entry = manifest.experts[name] if manifest is not None and name in manifest.experts else None
        experts[name] = {
            "domain": expert.domain,
            "layers": list(expert.layer_indices),
            "bytes": sizes[name],
            "sha256": entry.sha256 if entry else None,
        }
    return {
        "backbone": {
            "source": model.backbone.spec.source,
            "architecture": config.model_type,
            "layers": model.num_layers,
            "hidden_size": config.hidden_size,
            "vocab_size": config.vocab_size,
            "dtype": str(next(model.lm.parameters()).dtype).removeprefix("torch."),
            "fingerprint": model.fingerprint,
            "bytes": sizes["backbone"],
        },
        "experts": experts,
        "total_bytes": sum(sizes.values()),
        "ensemble_bytes": sizes["backbone"] * max(1, len(experts)),
    }


def print_info(info: dict) -> None:
    b = info["backbone"]
    mib = 1 << 20
    print(f"backbone   {b['source']} ({b['architecture']}, {b['layers']} layers, hidden {b['hidden_size']}, {b['dtype']})")
    print(f"           fingerprint {b['fingerprint']}  {b['bytes'] / mib:.1f} MiB")
    for name, e in info["experts"].items():
        print(f"expert     {name:<12} domain={e['domain']:<10} layers={e['layers']}  {e['bytes'] / mib:.1f} MiB")
    print(f"total      {info['total_bytes'] / mib:.1f} MiB (an ensemble of {max(1, len(info['experts']))} full models: {info['ensemble_bytes'] / mib:.1f} MiB)")


def _cmd_prepare(args) -> int:
    from ccoe.backbone import load_backbone
    from ccoe.config import BackboneSpec

    backbone = load_backbone(BackboneSpec(source=args.source))
    print(f"{args.source}: {backbone.num_layers} layers, fingerprint {backbone.fingerprint}")
    return 0


def _cmd_create(args) -> int:
    from ccoe.artifact import save_artifact

    spec = load_yaml(CCoESpec, args.config)
    router = load_yaml(RouterSpec, args.router) if args.router else spec.router
    model = build_model(spec)
    manifest = save_artifact(model, args.out, router=router)
    print(f"wrote {args.out} with experts {sorted(manifest.experts)}")
    return 0


def registry_at(tracking_uri: str | None, model_name: str):
    """The registry of `model_name` on the server `tracking_uri` (None: the local ./mlruns store)."""
    from ccoe.config import REGISTRY_EXPERIMENT, RegistrySpec, TrackingSpec

    return RegistrySpec(model_name=model_name, tracking=TrackingSpec(tracking_uri=tracking_uri, experiment=REGISTRY_EXPERIMENT))


def load_any(artifact: str, tracking_uri: str | None = None):
    """An artifact folder / fsspec root, or a registry URI (`models:/NAME@alias`, `models:/NAME/3`)."""
    if artifact.startswith("models:/"):
        from ccoe.config import RegistrySpec
        from ccoe.registry import load, parse_uri

        name, _ = parse_uri(artifact, RegistrySpec())
        return load(artifact, registry_at(tracking_uri, name))
    from ccoe.artifact import load_artifact

    return load_artifact(artifact)


def read_manifest_version(artifact: str, tracking_uri: str | None = None):
    """(manifest, registry version number) of an artifact folder / fsspec root (version None) or of a
    registry version (`models:/name/3`, `models:/name@champion`); no tensor is loaded."""
    if artifact.startswith("models:/"):
        from ccoe.config import RegistrySpec
        from ccoe.registry import get_version, parse_uri

        name, ref = parse_uri(artifact, RegistrySpec())
        found = get_version(registry_at(tracking_uri, name), ref, name)
        if found is None:
            raise KeyError(f"{artifact} does not exist in the registry")
        return found.manifest, found.version
    from ccoe.manifest import read_manifest

    return read_manifest(artifact), None


def read_any_manifest(artifact: str, tracking_uri: str | None = None):
    """The manifest of an artifact folder / fsspec root or of a registry version; no tensor is loaded."""
    return read_manifest_version(artifact, tracking_uri)[0]


def describe_manifest(manifest) -> dict:
    """What a manifest says, as plain data: backbone identity, experts with their blobs, router, parent."""
    return {
        "backbone": {"source": manifest.backbone.spec.source, "fingerprint": manifest.backbone.fingerprint},
        "experts": {
            name: {"domain": e.domain, "layers": e.layers, "bytes": e.bytes, "sha256": e.sha256, "run_id": e.run_id,
                   "data_fingerprint": e.data_fingerprint}
            for name, e in manifest.experts.items()
        },
        "router_domains": sorted(manifest.router.domains) if manifest.router else None,
        "storage": manifest.storage.uri if manifest.storage else None,
        "parent": manifest.parent,
    }


def _cmd_info(args) -> int:
    if args.load:
        model, _, manifest = load_any(args.artifact, args.tracking_uri)
        info = describe(model, manifest)
    else:
        info = describe_manifest(read_any_manifest(args.artifact, args.tracking_uri))
    if args.json:
        print(json.dumps(info, indent=2))
    elif args.load:
        print_info(info)
    else:
        mib = 1 << 20
        print(f"backbone   {info['backbone']['source']}  fingerprint {info['backbone']['fingerprint']}")
        for name, e in info["experts"].items():
            print(f"expert     {name:<12} domain={e['domain']:<10} layers={e['layers']}  {e['bytes'] / mib:.1f} MiB  sha256 {e['sha256'][:12]}…")
        print(f"router     {', '.join(info['router_domains'] or ['none'])}; parent version {info['parent'] or 'none'}"
              " (--load for architecture and memory)")
    return 0


def _routes(prompts, router, model, expert, backbone_only):
    if backbone_only:
        return [None] * len(prompts), ["--backbone-only"] * len(prompts)
    if expert is not None:
        return [expert] * len(prompts), [f"--expert {expert}"] * len(prompts)
    if router is None:
        return [None] * len(prompts), ["artifact has no router: backbone"] * len(prompts)
    decisions = router.route_many(prompts, available=model.expert_names())
    return [d.expert for d in decisions], [d.reason for d in decisions]


def _cmd_route(args) -> int:
    from ccoe.manifest import blob_store_for, read_manifest

    manifest = read_manifest(args.artifact)
    prompts = list(args.prompts)
    if args.file is not None:
        from ccoe.learned_router import read_queries

        prompts += read_queries(args.file)
    if not prompts:
        print("ccoe route: give prompts, or --file with one query per line", file=sys.stderr)
        return 2
    if manifest.learned_router is not None:
        from ccoe.artifact import router_from_manifest

        router = router_from_manifest(manifest, blob_store_for(manifest, args.artifact))
    elif manifest.router is not None:
        from ccoe.router import RuleRouter

        router = RuleRouter(manifest.router)
    else:
        print("this artifact has no router", file=sys.stderr)
        return 2
    for prompt, decision in zip(prompts, router.route_many(prompts, available=list(manifest.routable_experts()))):
        print(json.dumps({"prompt": prompt, **decision.as_dict()}))
    return 0


def given_prompts(items: list[str] | None) -> dict[str, list[str]]:
    """`--prompts DOMAIN=FILE.jsonl` arguments -> prompts per domain (a domain that is not built in)."""
    from ccoe.learned_router import read_queries

    given = {}
    for item in items or []:
        domain, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--prompts takes DOMAIN=FILE.jsonl, got {item!r}")
        given[domain] = read_queries(Path(path))
    return given


def _cmd_router_train(args) -> int:
    from ccoe.artifact import stage_router
    from ccoe.config import LearnedRouterSpec
    from ccoe.domains.general import router_examples
    from ccoe.learned_router import SentenceEncoder, domain_prompts, train_learned_router, training_set
    from ccoe.manifest import PLANNER_DOMAIN, blob_store_for, merge, read_manifest, verify_present, write_manifest
    from ccoe.storage import BlobStore

    spec = load_yaml(LearnedRouterSpec, args.config) if args.config else LearnedRouterSpec()
    manifest = read_manifest(args.artifact)
    if not manifest.routable_experts():
        print("ccoe router train: the artifact has no experts to route to", file=sys.stderr)
        return 2
    given = given_prompts(args.prompts)
    experts = {name: entry.domain for name, entry in manifest.routable_experts().items()}
    planner = any(entry.domain == PLANNER_DOMAIN for entry in manifest.experts.values())
    examples = router_examples(experts.values(), spec, planning=planner)
    data = training_set(domain_prompts(experts.values(), given), examples.general, spec, examples.extra, examples.composed)
    print(f"embedding {len(data.texts)} training texts ({', '.join(data.classes)})", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if done == total or done // spec.batch_size % 10 == 0:
            print(f"  {done}/{total}", file=sys.stderr)

    fit = train_learned_router(SentenceEncoder(), data, spec, progress=progress)
    store = blob_store_for(manifest, args.artifact)
    metrics = {"validation_accuracy": fit.validation_accuracy, "train_accuracy": fit.train_accuracy, "validation_n": fit.validation_n}
    entry = stage_router(store, fit.router, experts, metrics)
    updated = merge(manifest, learned_router=entry, parent=manifest.parent)
    verify_present(updated, store, [entry.sha256])
    write_manifest(BlobStore(args.artifact), updated)
    print(f"learned router {entry.sha256[:12]}…: {len(fit.router.classes)} classes, validation accuracy "
          f"{fit.validation_accuracy:.1%} (n={fit.validation_n}), embedding {fit.embed_seconds:.0f} s, fit {fit.fit_seconds:.1f} s")
    return 0


def _cmd_planner_train(args) -> int:
    from ccoe.config import PlannerSpec, TrackingSpec
    from lightning_modules.planner import train_planner

    spec = load_yaml(PlannerSpec, args.config) if args.config else PlannerSpec()
    given = given_prompts(args.prompts)
    tracking = TrackingSpec(tracking_uri=args.tracking_uri) if args.tracking_uri else None
    done = train_planner(args.artifact, spec, given, tracking, progress=lambda line: print(line, file=sys.stderr))
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(done.entry.metrics.items()))
    print(f"planner {spec.name!r} ({done.entry.sha256[:12]}…, layers {done.entry.layers}) trained in {done.seconds:.0f} s "
          f"on {done.composed_rows} composed + {done.single_rows} one-step plans: {shown}")
    return 0


def _cmd_plan(args, model, router, manifest) -> int:
    from ccoe.planning import plan_and_run

    for result in plan_and_run(model, model.backbone.tokenizer, manifest, router, args.prompts):
        if args.json:
            print(json.dumps(result.as_dict(), ensure_ascii=False))
            continue
        how = f"fallback: {result.plan.fallback}" if result.plan.fallback else f"{len(result.plan.steps)}-step plan"
        print(f"> {result.query}\n[{how}]")
        for step in result.steps:
            print(f"  {step.index}. {step.expert or 'backbone'} ({step.domain}): {step.completion!r} -> {step.answer!r}"
                  + (f" [{step.error}]" if step.error else ""))
        print(f"answer: {result.answer}\n")
    return 0


def _cmd_serve(args) -> int:
    from ccoe.config import ServeSpec
    from ccoe.serving.http import serve

    spec = load_yaml(ServeSpec, args.config) if args.config else ServeSpec()
    pin = [name for name in (args.pin or "").split(",") if name]
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("poll_interval_s", args.poll_interval),
                                   ("max_resident", args.max_resident), ("pin", pin or None),
                                   ("grouped_layers", args.grouped_layers)) if v is not None}
    serve(args.model, ServeSpec.model_validate({**spec.model_dump(), **overrides}), args.tracking_uri, log=lambda line: print(line, flush=True))
    return 0


def _cmd_generate(args) -> int:
    import torch

    from ccoe.generation import generate_text

    model, router, manifest = load_any(args.artifact, args.tracking_uri)
    if args.plan:
        return _cmd_plan(args, model, router, manifest)
    experts, reasons = _routes(args.prompts, router, model, args.expert, args.backbone_only)
    generator = torch.Generator().manual_seed(args.seed)
    completions = generate_text(
        model, model.backbone.tokenizer, args.prompts, experts, max_new_tokens=args.max_new_tokens,
        do_sample=args.sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator,
    )
    for completion, reason in zip(completions, reasons):
        if args.json:
            print(json.dumps({"prompt": completion.prompt, "expert": completion.expert, "reason": reason, "text": completion.text}))
        else:
            print(f"[{completion.expert or 'backbone'}] {reason}\n> {completion.prompt}\n{completion.text}\n")
    return 0


def _cmd_export(args) -> int:
    from ccoe.export import export_expert

    model, _, _ = load_any(args.artifact, args.tracking_uri)
    out = export_expert(model, args.expert, args.out)
    print(f"wrote {out}: load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def _cmd_data(args) -> int:
    from ccoe.domains import prepare, router_spec

    if args.action == "router":
        print(router_spec().to_yaml(), end="")
        return 0
    for name, files in prepare(args.domains or None, force=args.force).items():
        card = json.loads(files.card.read_text())
        print(f"{name:<8} train {card['train_rows']:>5}  eval {card['eval_rows']:>4}  {files.train.parent}")
    return 0


def _cmd_gc(args) -> int:
    from ccoe.config import StorageSpec
    from ccoe.manifest import collect_garbage, read_manifest
    from ccoe.storage import BlobStore

    if not args.model and not args.artifact:
        print("ccoe gc: name what references the store: --model NAME (registry) and/or --artifact DIR", file=sys.stderr)
        return 2
    referenced: set[str] = set()
    if args.model:
        from ccoe import registry

        for name in args.model:
            referenced |= registry.referenced_blobs(registry_at(args.tracking_uri, name))
    for folder in args.artifact or []:
        referenced |= {entry.sha256 for entry in read_manifest(folder).blob_entries().values()}
    store = BlobStore(StorageSpec(uri=args.storage, endpoint_url=args.endpoint_url, region=args.region))
    report = collect_garbage(store, referenced, delete=args.delete, min_age_s=args.min_age_hours * 3600)
    verb = "removed" if report.deleted else "would remove (dry run; --delete to remove)"
    for blob in report.unreferenced:
        print(f"{verb:<8} {blob.sha256}  {blob.bytes / (1 << 20):.1f} MiB")
    for blob in report.too_recent:
        print(f"kept     {blob.sha256}  unreferenced but younger than {args.min_age_hours:g} h (a merge may be publishing it)")
    print(f"{report.referenced} referenced blobs kept; {len(report.unreferenced)} unreferenced "
          f"({report.reclaimable_bytes / (1 << 20):.1f} MiB) {'removed' if report.deleted else 'found'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccoe", description="Collaboration of Experts: frozen backbone + layer experts")
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="de-quantize and cache the offline SmolLM2 backbone")
    prep.add_argument("--source", default="smollm2-135m-instruct")
    prep.set_defaults(func=_cmd_prepare)

    create = sub.add_parser("create", help="build an artifact with fresh experts from a CCoESpec YAML")
    create.add_argument("--config", required=True, type=Path)
    create.add_argument("--router", type=Path, help="RouterSpec YAML (overrides the config's router)")
    create.add_argument("--out", required=True, help="artifact root (local folder or fsspec URI)")
    create.set_defaults(func=_cmd_create)

    artifact_help = "artifact folder / fsspec root, or models:/NAME@alias from the MLflow registry"
    tracking_help = "MLflow tracking URI for models:/ artifacts (default: sqlite:///mlruns/mlflow.db)"

    info = sub.add_parser("info", help="what an artifact holds (its manifest; --load for architecture and memory)")
    info.add_argument("--artifact", required=True, help=artifact_help)
    info.add_argument("--tracking-uri", help=tracking_help)
    info.add_argument("--json", action="store_true")
    info.add_argument("--load", action="store_true", help="load the backbone and experts for architecture and memory (slow)")
    info.set_defaults(func=_cmd_info)

    route = sub.add_parser("route", help="explain the gate's decision for prompts, one JSON line each (loads no backbone)")
    route.add_argument("--artifact", required=True)
    route.add_argument("--file", type=Path, help="JSONL file of queries: a string, or an object with 'query', per line")
    route.add_argument("prompts", nargs="*")
    route.set_defaults(func=_cmd_route)

    router = sub.add_parser("router", help="train the learned router of an artifact folder for its experts")
    router_sub = router.add_subparsers(dest="action", required=True)
    train = router_sub.add_parser("train", help="train on the experts' training prompts + general prompts; rewrites the manifest")
    train.add_argument("--artifact", required=True, help="artifact folder or fsspec root")
    train.add_argument("--config", type=Path, help="LearnedRouterSpec YAML (default: the built-in settings)")
    train.add_argument("--prompts", action="append", metavar="DOMAIN=FILE.jsonl",
                       help="training prompts of a domain that is not built in; repeatable")
    train.set_defaults(func=_cmd_router_train)

    planner = sub.add_parser("planner", help="train the planner expert of an artifact folder (expert planning)")
    planner_sub = planner.add_subparsers(dest="action", required=True)
    ptrain = planner_sub.add_parser("train", help="train on composed and one-step plans for the artifact's experts; rewrites the manifest")
    ptrain.add_argument("--artifact", required=True, help="artifact folder or fsspec root")
    ptrain.add_argument("--config", type=Path, help="PlannerSpec YAML (default: configs/planner.yaml's settings, built in)")
    ptrain.add_argument("--tracking-uri", help="MLflow tracking URI of the training run (default: ./mlruns)")
    ptrain.add_argument("--prompts", action="append", metavar="DOMAIN=FILE.jsonl",
                        help="prompts of a domain that is not built in, planned as one step; repeatable")
    ptrain.set_defaults(func=_cmd_planner_train)

    gen = sub.add_parser("generate", help="generate text; prompts are routed by the artifact's gate")
    gen.add_argument("--artifact", required=True, help=artifact_help)
    gen.add_argument("--tracking-uri", help=tracking_help)
    who = gen.add_mutually_exclusive_group()
    who.add_argument("--expert", help="force this expert for every prompt")
    who.add_argument("--backbone-only", action="store_true", help="bypass the experts")
    who.add_argument("--plan", action="store_true", help="expert planning: the planner splits each prompt into steps, "
                     "each run by its expert with earlier answers in context; prints the trace")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=0.7)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--json", action="store_true")
    gen.add_argument("prompts", nargs="+")
    gen.set_defaults(func=_cmd_generate)

    data = sub.add_parser("data", help="prepare the five domains' data offline, or print the gate's rules")
    data.add_argument("action", choices=["prepare", "router"])
    data.add_argument("--domains", nargs="*", help="default: all five")
    data.add_argument("--force", action="store_true", help="rebuild even if prepared")
    data.set_defaults(func=_cmd_data)

    export = sub.add_parser("export", help="write one expert as a standalone transformers checkpoint")
    export.add_argument("--artifact", required=True, help=artifact_help)
    export.add_argument("--tracking-uri", help=tracking_help)
    export.add_argument("--expert", required=True)
    export.add_argument("--out", required=True, type=Path)
    export.set_defaults(func=_cmd_export)

    srv = sub.add_parser("serve", help="OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models) that follows the registry alias")
    srv.add_argument("--model", required=True, help=artifact_help)
    srv.add_argument("--tracking-uri", help=tracking_help)
    srv.add_argument("--config", help="a ServeSpec YAML (configs/serve.yaml); flags below override it")
    srv.add_argument("--host", help="default 127.0.0.1")
    srv.add_argument("--port", type=int)
    srv.add_argument("--poll-interval", type=float, help="seconds between reads of --model (0: never swap)")
    srv.add_argument("--max-resident", type=int, help="experts in memory at most; the least recently used is evicted")
    srv.add_argument("--pin", help="comma-separated experts that stay resident (e.g. law,sql)")
    srv.add_argument("--grouped-layers", action=argparse.BooleanOptionalAction, default=None,
                     help="run each expert layer of a mixed batch as one call over stacked weights (default: on; "
                          "off saves one weight stack per expert layer)")
    srv.set_defaults(func=_cmd_serve)

    gc = sub.add_parser("gc", help="remove expert blobs that no registry version and no given artifact references (dry run by default)")
    gc.add_argument("--storage", required=True, help="blob store root: a folder or s3://bucket/prefix")
    gc.add_argument("--endpoint-url", help="S3 endpoint (keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    gc.add_argument("--region")
    gc.add_argument("--model", action="append", help="registered model whose versions (all of them) reference the store; repeatable")
    gc.add_argument("--tracking-uri", help=tracking_help)
    gc.add_argument("--artifact", action="append", help="artifact folder whose manifest references the store; repeatable")
    gc.add_argument("--min-age-hours", type=float, default=24.0,
                    help="keep unreferenced blobs younger than this (default 24: training jobs put their blobs into the store "
                         "when they finish, and the merge that references them runs after the slowest job)")
    gc.add_argument("--delete", action="store_true", help="remove them (default: only list them)")
    gc.set_defaults(func=_cmd_gc)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, OSError) as err:
        print(f"ccoe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
