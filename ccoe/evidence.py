"""Paired evidence: how much a candidate differs from its reference on the same items, with an interval.

The gate compares two models scored on one item set, so the comparison is paired: item i's score
under the candidate is compared with item i's score under the reference. Pairing removes the
between-item variance (easy and hard questions are easy or hard for both), which is most of it on
these sets, so a paired interval is several times narrower than comparing two independent means.

The interval is a seeded paired bootstrap over items (percentile method): resample the n items with
replacement, recompute the difference of (weighted) means, take the (1 - confidence)/2 quantiles.
Why a bootstrap and not a normal approximation: task metrics are 0/1 per item with n of 8-164, where
a normal interval around 0.000 vs 0.000 claims a width of zero from no information; the bootstrap
makes no shape assumption and, with weights, also covers the token-weighted NLL (a ratio of sums).
Deterministic for a seed, so a decision can be reproduced from the logged scores.

`detectable` is the smallest true difference this n would find with 80% power at this confidence
(from the observed spread of the per-item differences). For 0/1 metrics it is never below 6/n: an
exact sign test needs at least 6 items that changed, all in one direction, to reach p < 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

POWER = 0.8
FEWEST_SIGNIFICANT_FLIPS = 6  # 2 * 0.5**6 = 0.031 < 0.05: the fewest one-sided discordant pairs an exact test accepts


@dataclass(frozen=True)
class PairedDifference:
    """candidate - reference on n paired items: the estimate and its `confidence` interval [low, high].

    `detectable`: the smallest |difference| this n finds with 80% power (see the module docstring).
    """

    n: int
    estimate: float
    low: float
    high: float
    confidence: float
    detectable: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0

    def flipped(self) -> "PairedDifference":
        """reference - candidate: for lower-is-better quantities (NLL), so that positive means better."""
        return PairedDifference(self.n, 0.0 - self.estimate, 0.0 - self.high, 0.0 - self.low, self.confidence, self.detectable)

    def text(self, digits: int = 3) -> str:
        """`+0.083 [+0.021, +0.146] (95%, n=96)`."""
        f = f"{{:+.{digits}f}}"
        return f"{f.format(self.estimate)} [{f.format(self.low)}, {f.format(self.high)}] ({self.confidence:.0%}, n={self.n})"


def paired_difference(
    candidate: Sequence[float],
    reference: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    binary: bool = False,
) -> PairedDifference:
    """The weighted-mean difference candidate - reference over paired items, with a bootstrap interval.

    candidate, reference: (n,) per-item values on the same items in the same order; weights: (n,)
    (token counts for a token-weighted mean NLL; default equal). `binary`: the values are 0/1 scores
    (applies the exact-test floor to `detectable`).
    """
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two equal-length 1-D sequences, got shapes {a.shape} and {b.shape}")
    n = a.shape[0]
    if n == 0:
        raise ValueError("paired scores need at least one item")
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != a.shape or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights need one non-negative value per item and a positive sum")
    d = a - b
    estimate = float((w * d).sum() / w.sum())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))  # (resamples, n) item indices
    picked_w = w[picks]
    totals = picked_w.sum(axis=1)
    means = np.divide((picked_w * d[picks]).sum(axis=1), totals, out=np.full(resamples, estimate), where=totals > 0)
    tail = (1 - confidence) / 2
    low, high = (float(v) for v in np.quantile(means, [tail, 1 - tail]))
    z = NormalDist().inv_cdf(1 - tail) + NormalDist().inv_cdf(POWER)
    spread = math.sqrt(float((w * (d - estimate) ** 2).sum() / w.sum()))
    n_eff = w.sum() ** 2 / (w**2).sum()  # Kish's effective sample size of a weighted mean
    detectable = z * spread / math.sqrt(n_eff)
    if binary:
        detectable = max(detectable, FEWEST_SIGNIFICANT_FLIPS / n)
    return PairedDifference(n, estimate, min(low, estimate), max(high, estimate), confidence, detectable)


def detectable_for(n: int, discordance: float, confidence: float = 0.95) -> float:
    """The smallest difference of a 0/1 metric that n paired items detect with 80% power, when a
    fraction `discordance` of the items change between the two models (planning: sizing an eval set)."""
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2) + NormalDist().inv_cdf(POWER)
    return max(z * math.sqrt(discordance / n), FEWEST_SIGNIFICANT_FLIPS / n)
