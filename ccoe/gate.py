"""The promotion gate: a pure decision on paired per-domain evidence, and its chart.

Per domain, the candidate is compared with its reference (the champion's expert for the domain, or
the base backbone when the champion has none) on the same items (`ccoe.evidence.paired_difference`):
the task-metric difference and the held-out NLL decrease, each with an interval. GateSpec says which
of the two a domain is judged on and what it must show; every domain gets one reason line with the
difference, the interval and n, so a refusal says what to fix and a promotion says why.

Outcomes: "improved" (interval above zero), "regressed" (below zero), "no measurable change"
(interval contains zero). The last never reads as an improvement: a retrained domain needs its lower
bound above the margin (superiority) or above -tolerance (non-inferiority, said explicitly).
A retrained domain that could not be scored at all (no scorer and no held-out split) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ccoe.config import GateSpec
from ccoe.evaluate import DomainScore
from ccoe.evidence import PairedDifference, paired_difference

Outcome = Literal["improved", "no measurable change", "regressed", "unscored"]
Basis = Literal["metric", "loss"]


@dataclass(frozen=True)
class DomainScores:
    """One domain's scores for the three models, on the same items in the same order."""

    domain: str
    base: DomainScore
    champion: DomainScore | None
    candidate: DomainScore

    @property
    def reference(self) -> tuple[str, DomainScore]:
        """What the candidate must beat: the champion where it has an expert scored here, else the base."""
        return ("champion", self.champion) if self.champion is not None else ("base", self.base)


@dataclass(frozen=True)
class DomainEvidence:
    """The gate's finding on one domain.

    metric: candidate - reference task metric (None without a scorer); loss: reference NLL - candidate
    NLL in nats/token (positive = the candidate is better); `basis` says which of them was judged.
    """

    domain: str
    retrained: bool
    reference: str
    basis: Basis | None
    metric: PairedDifference | None
    loss: PairedDifference | None
    outcome: Outcome
    ok: bool
    reason: str

    @property
    def judged(self) -> PairedDifference | None:
        return self.metric if self.basis == "metric" else self.loss


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    evidence: tuple[DomainEvidence, ...] = ()

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self.evidence]

    def summary(self) -> str:
        return ("PROMOTE: " if self.promote else "REJECT: ") + "; ".join(self.reasons)


def _pair(candidate: DomainScore, reference: DomainScore) -> None:
    if candidate.num_items != reference.num_items or len(candidate.item_nll) != len(reference.item_nll):
        raise ValueError(f"{candidate.domain}: candidate and reference were scored on different items "
                         f"({candidate.num_items} vs {reference.num_items}); paired evidence needs the same items")


def loss_decrease(gate: GateSpec, candidate: DomainScore, reference: DomainScore) -> PairedDifference:
    """Token-weighted NLL decrease (reference - candidate): per-item mean NLL weighted by token count,
    so the estimate equals the difference of the two domains' losses."""
    tokens = [max(t, 1.0) for t in candidate.item_tokens]
    per_token = lambda score: [nll / t for nll, t in zip(score.item_nll, tokens)]  # noqa: E731
    return paired_difference(per_token(candidate), per_token(reference), tokens, confidence=gate.confidence,
                             resamples=gate.resamples, seed=gate.seed).flipped()


def judge(gate: GateSpec, scores: DomainScores, retrained: bool) -> DomainEvidence:
    """The evidence and verdict for one domain (see the module docstring for the rules)."""
    label, reference = scores.reference
    candidate, domain = scores.candidate, scores.domain
    _pair(candidate, reference)
    if not math.isfinite(candidate.loss):  # a diverged expert: no interval to compute, and nothing to weigh
        return DomainEvidence(domain, retrained, label, "loss", None, None, "regressed", False,
                              f"{domain}: {'retrained' if retrained else 'untouched'}, the candidate's NLL is not finite "
                              f"({candidate.loss}) on {candidate.num_items} items: diverged REGRESSED")
    loss = loss_decrease(gate, candidate, reference)
    metric = None
    if candidate.metric is not None and reference.metric is not None:
        metric = paired_difference(candidate.item_scores, reference.item_scores, confidence=gate.confidence,
                                   resamples=gate.resamples, seed=gate.seed, binary=True)
    basis: Basis = "metric" if metric is not None and gate.basis.get(domain, "metric") == "metric" else "loss"
    judged = metric if basis == "metric" else loss
    outcome: Outcome = "improved" if judged.low > 0 else "regressed" if judged.high < 0 else "no measurable change"
    if basis == "metric":
        shown = f"metric {candidate.metric:.3f} vs {label} {reference.metric:.3f}, difference {judged.text()}"
        margin = gate.margin_for(domain)
    else:
        shown = f"NLL {candidate.loss:.3f} vs {label} {reference.loss:.3f}, decrease {judged.text()}"
        margin = gate.loss_margin
    shown += f", detectable {judged.detectable:.3f}"
    if retrained and gate.retrained == "superiority":
        ok = outcome == "improved" and judged.low > margin
        needs = f"needs lower bound > {margin:g}"
    elif retrained:
        ok = judged.low > -gate.tolerance
        needs = f"non-inferiority: needs lower bound > {-gate.tolerance:g}"
    else:
        ok = judged.high >= -gate.tolerance
        needs = f"untouched: no significant drop beyond {gate.tolerance:g}"
    verdict = "ok" if ok else ("REGRESSED" if outcome == "regressed" else "FAILS")
    reason = f"{domain}: {'retrained' if retrained else 'untouched'}, {shown}: {outcome} ({needs}) {verdict}"
    return DomainEvidence(domain, retrained, label, basis, metric, loss, outcome, ok, reason)


@dataclass(frozen=True)
class RoutingScores:
    """Per labelled query, 1.0 when a gate sent it to its labelled domain, for the candidate's gate and
    its reference (the champion's gate; without a champion, the candidate's rules alone), same order."""

    reference: str
    candidate: tuple[float, ...]
    baseline: tuple[float, ...]


def judge_routing(gate: GateSpec, routing: RoutingScores) -> DomainEvidence:
    """Routing must not regress: a candidate whose gate routes the labelled queries significantly worse
    than its reference (interval below -tolerance) is refused, whatever its experts score."""
    if len(routing.candidate) != len(routing.baseline) or not routing.candidate:
        raise ValueError("routing evidence needs the same non-empty list of labelled queries for both gates")
    diff = paired_difference(routing.candidate, routing.baseline, confidence=gate.confidence, resamples=gate.resamples,
                             seed=gate.seed, binary=True)
    outcome: Outcome = "improved" if diff.low > 0 else "regressed" if diff.high < 0 else "no measurable change"
    ok = diff.high >= -gate.tolerance
    accuracy = lambda values: sum(values) / len(values)  # noqa: E731
    reason = (f"routing: accuracy {accuracy(routing.candidate):.3f} vs {routing.reference} {accuracy(routing.baseline):.3f} "
              f"on {diff.n} labelled queries, difference {diff.text()}: {outcome}"
              + (" ok" if ok else f" REFUSED (a significant drop below -{gate.tolerance:g})"))
    return DomainEvidence("routing", False, routing.reference, "metric", diff, None, outcome, ok, reason)


def decide(gate: GateSpec, scores: dict[str, DomainScores], retrained: Iterable[str], routing: RoutingScores | None = None) -> GateDecision:
    """Promote only if every domain's evidence passes, every retrained domain was scored, and routing
    (when given) did not regress."""
    retrained = set(retrained)
    evidence = [judge(gate, scores[domain], domain in retrained) for domain in sorted(scores)]
    if routing is not None:
        evidence.append(judge_routing(gate, routing))
    for domain in sorted(retrained - set(scores)):
        evidence.append(DomainEvidence(
            domain, True, "base", None, None, None, "unscored", False,
            f"{domain}: retrained but unscored (no task scorer and no held-out split to measure NLL on; "
            "give its data a val_fraction > 0, or a built-in domain) REFUSED",
        ))
    evidence.sort(key=lambda e: e.domain)
    return GateDecision(all(e.ok for e in evidence), tuple(evidence))


def evidence_rows(scores: dict[str, DomainScores], decision: GateDecision) -> list[dict]:
    """One JSON-ready row per domain: each model's metric/loss/route, and the judged difference with
    its interval, n, detectable difference and outcome (what scores.json and the UI table show)."""
    rows = []
    found = {e.domain: e for e in decision.evidence}
    for domain in sorted(set(scores) | set(found)):
        row: dict = {"domain": domain}
        by_model = scores.get(domain)
        for label in ("base", "champion", "candidate"):
            score = getattr(by_model, label) if by_model else None
            row[f"{label}_metric"] = None if score is None or score.metric is None else round(score.metric, 4)
            row[f"{label}_loss"] = None if score is None else round(score.loss, 4)
            row[f"{label}_route"] = None if score is None else (score.route or "backbone")
        evidence = found.get(domain)
        judged = evidence.judged if evidence else None
        row.update({
            "basis": evidence.basis if evidence else None,
            "reference": evidence.reference if evidence else None,
            "n": judged.n if judged else 0,
            "diff": None if judged is None else round(judged.estimate, 4),
            "diff_low": None if judged is None else round(judged.low, 4),
            "diff_high": None if judged is None else round(judged.high, 4),
            "detectable": None if judged is None else round(judged.detectable, 4),
            "outcome": evidence.outcome if evidence else None,
            "ok": evidence.ok if evidence else None,
        })
        rows.append(row)
    return rows


def bar_chart(rows: list[dict], path: str | Path, title: str) -> Path:
    """Left: the task metric per domain for base, champion and candidate. Right: what the gate judged,
    candidate vs reference with its interval per domain (green passed, red failed), around zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["domain"] for r in rows]
    fig, (bars_ax, diff_ax) = plt.subplots(1, 2, figsize=(1.6 * len(labels) + 6, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.27
    for k, (label, color) in enumerate((("base", "#9e9e9e"), ("champion", "#4c72b0"), ("candidate", "#dd8452"))):
        present = [(i, r[f"{label}_metric"]) for i, r in enumerate(rows) if r[f"{label}_metric"] is not None]
        if not present:  # e.g. no champion yet: no bars rather than misleading zeros
            continue
        bars = bars_ax.bar([i + (k - 1) * width for i, _ in present], [v for _, v in present], width, label=label, color=color)
        bars_ax.bar_label(bars, fmt="%.2f", fontsize=7)
    bars_ax.set_xticks(range(len(labels)), labels)
    bars_ax.set_ylabel("task metric")
    top = max([1e-6] + [r[f"{m}_metric"] for r in rows for m in ("base", "champion", "candidate") if r[f"{m}_metric"] is not None])
    bars_ax.set_ylim(0, top * 1.25)
    bars_ax.legend(fontsize=8, ncols=3, loc="upper left")
    judged = [(i, r) for i, r in enumerate(rows) if r["diff"] is not None]
    for i, r in judged:
        color = "#2e7d32" if r["ok"] else "#c62828"
        diff_ax.errorbar(r["diff"], i, xerr=[[r["diff"] - r["diff_low"]], [r["diff_high"] - r["diff"]]], fmt="o", color=color, capsize=4)
    diff_ax.axvline(0, color="#555", linewidth=0.8)
    diff_ax.set_yticks([i for i, _ in judged], [f"{r['domain']} ({'NLL drop' if r['basis'] == 'loss' else 'metric'}, n={r['n']})" for _, r in judged])
    diff_ax.set_ylim(-0.7, len(rows) - 0.3)
    diff_ax.invert_yaxis()
    diff_ax.set_xlabel("candidate vs reference, 95% interval (> 0 better)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
