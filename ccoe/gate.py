"""The promotion gate: a pure decision on per-domain scores, and its bar chart.

Scores come as {domain: {"base": DomainScore, "champion": DomainScore | None, "candidate": DomainScore}}.
A retrained domain must beat its reference (the champion's score, or the base backbone's when the
champion has no expert for that domain) by the domain's margin; every other domain must stay within
`tolerance` of the champion. The decision lists a reason per domain, so a refusal says what to fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ccoe.config import GateSpec
from ccoe.evaluate import DomainScore


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return ("PROMOTE: " if self.promote else "REJECT: ") + "; ".join(self.reasons)


def decide(gate: GateSpec, scores: dict[str, dict[str, DomainScore | None]], retrained: Iterable[str]) -> GateDecision:
    retrained = set(retrained)
    promote, reasons = True, []
    for domain, by_model in sorted(scores.items()):
        candidate = by_model["candidate"].metric
        champion = by_model.get("champion")
        if domain in retrained:
            reference_name = "champion" if champion is not None else "base"
            reference = (champion or by_model["base"]).metric
            needed = reference + gate.margin_for(domain)
            ok = candidate > needed if gate.strict else candidate >= needed
            reasons.append(f"{domain}: candidate {candidate:.3f} vs {reference_name} {reference:.3f} "
                           f"(needs {'>' if gate.strict else '>='} {needed:.3f}) {'ok' if ok else 'FAILS'}")
        else:
            reference = (champion or by_model["base"]).metric
            ok = candidate >= reference - gate.tolerance
            reasons.append(f"{domain}: untouched, {candidate:.3f} vs {reference:.3f} (tolerance {gate.tolerance:g}) {'ok' if ok else 'REGRESSED'}")
        promote &= ok
    return GateDecision(promote, reasons)


def score_rows(scores: dict[str, dict[str, DomainScore | None]]) -> list[dict]:
    """One row per domain: metric and loss for base, champion and candidate (None where absent)."""
    rows = []
    for domain, by_model in sorted(scores.items()):
        row = {"domain": domain}
        for label in ("base", "champion", "candidate"):
            score = by_model.get(label)
            row[f"{label}_metric"] = None if score is None else round(score.metric, 4)
            row[f"{label}_loss"] = None if score is None else round(score.loss, 4)
            row[f"{label}_route"] = None if score is None else (score.route or "backbone")
        rows.append(row)
    return rows


def bar_chart(rows: list[dict], path: str | Path, title: str) -> Path:
    """Grouped bars of the task metric per domain: base, champion, candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["domain"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2, 3.6))
    width = 0.27
    for k, (label, color) in enumerate((("base", "#9e9e9e"), ("champion", "#4c72b0"), ("candidate", "#dd8452"))):
        present = [(i, r[f"{label}_metric"]) for i, r in enumerate(rows) if r[f"{label}_metric"] is not None]
        if not present:  # e.g. no champion yet: no bars rather than misleading zeros
            continue
        bars = ax.bar([i + (k - 1) * width for i, _ in present], [v for _, v in present], width, label=label, color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("task metric")
    ax.set_ylim(0, max(1e-6, max((r[f"{m}_metric"] or 0.0) for r in rows for m in ("base", "champion", "candidate"))) * 1.25)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=3, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
