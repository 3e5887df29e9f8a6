"""The gate decides on paired evidence: intervals, "no measurable change", regressions, unscored domains."""

import numpy as np
import pytest

from ccoe.config import GateSpec
from ccoe.evaluate import DomainScore
from ccoe.evidence import clopper_pearson, detectable_for, paired_difference
from ccoe.gate import DomainScores, RoutingScores, bar_chart, decide, evidence_rows, judge_routing


def score(domain, right, nll=None, route=None):
    """A route's per-item scores: `right` 0/1 per item (None: no scorer), `nll` per-token NLL per item."""
    n = len(right) if right is not None else len(nll)
    nll = [2.0] * n if nll is None else nll
    tokens = [10.0] * n
    metric = None if right is None else sum(right) / n
    return DomainScore(domain, route, sum(x * t for x, t in zip(nll, tokens)) / sum(tokens), metric, n,
                       () if right is None else tuple(float(x) for x in right), tuple(x * t for x, t in zip(nll, tokens)), tuple(tokens))


def domain(name, base, candidate, champion=None):
    return DomainScores(name, base, champion, candidate)


def test_the_bootstrap_interval_is_deterministic_contains_the_estimate_and_is_of_the_right_size():
    rng = np.random.default_rng(1)
    a, b = rng.normal(2.0, 1.0, 96), rng.normal(2.0, 1.0, 96)
    first, again = paired_difference(a, b, seed=3), paired_difference(a, b, seed=3)
    assert first == again and first.low <= first.estimate <= first.high
    assert first.estimate == pytest.approx((a - b).mean())
    se = (a - b).std() / np.sqrt(96)
    assert first.high - first.low == pytest.approx(2 * 1.96 * se, rel=0.15)  # the bootstrap agrees with the normal width here


def test_the_exact_interval_of_a_01_metric_agrees_with_mcnemars_exact_test():
    assert clopper_pearson(5, 5) == pytest.approx((0.4781762498950185, 1.0))  # = Beta(0.025; 5, 1), SciPy's value
    assert clopper_pearson(3, 10) == pytest.approx((0.06673951117773447, 0.6524528500599973))
    five = paired_difference([1] * 5 + [0] * 19, [0] * 24, binary=True)  # 5 gained, 0 lost: exact p = 0.0625
    six = paired_difference([1] * 6 + [0] * 18, [0] * 24, binary=True)  # 6 gained, 0 lost: exact p = 0.031
    assert not five.significant and five.low < 0 < five.estimate and six.significant and six.low > 0
    mixed = paired_difference([1, 1, 1, 0] * 10, [0, 1, 1, 1] * 10, binary=True)  # 10 gained, 10 lost
    assert mixed.estimate == 0 and mixed.low < -0.1 and mixed.high > 0.1
    same = paired_difference([1, 0, 1, 1], [1, 0, 1, 1], binary=True)
    assert (same.estimate, same.low, same.high, same.significant) == (0.0, 0.0, 0.0, False)
    assert same.detectable == 6 / 4  # no item changed: only the exact-test floor is left, and n=4 cannot detect anything
    with pytest.raises(ValueError, match="0/1"):
        paired_difference([0.5], [1.0], binary=True)


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    for binary in (True, False):
        covered = 0
        for trial in range(200):  # candidate right with p=0.55, reference p=0.40, correlated through a shared difficulty
            easy = rng.random(120)
            a, b = (easy < 0.55).astype(float), (easy < 0.40).astype(float)
            flip = rng.random(120) < 0.1
            a[flip] = 1 - a[flip]
            truth = (0.55 * 0.9 + 0.45 * 0.1) - 0.40
            diff = paired_difference(a, b, seed=trial, resamples=1000, binary=binary)
            covered += diff.low <= truth <= diff.high
        assert 0.91 <= covered / 200 <= 0.99


def test_weights_make_the_estimate_the_difference_of_token_weighted_losses():
    diff = paired_difference([1.0, 3.0], [2.0, 2.0], weights=[1, 3])
    assert diff.estimate == pytest.approx((1 * 1 + 3 * 3) / 4 - 2.0)
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([1, 0], [1])


def test_detectable_difference_shrinks_with_n_and_has_the_exact_test_floor():
    assert detectable_for(96, 0.25) == pytest.approx((1.96 + 0.8416) * 0.5 / np.sqrt(96), rel=1e-3)
    assert detectable_for(164, 0.25) < detectable_for(96, 0.25)
    assert detectable_for(8, 0.01) == 6 / 8


def test_a_clear_improvement_promotes_with_its_interval_in_the_reason():
    base = score("math", [0] * 30 + [1] * 10)
    cand = score("math", [1] * 20 + [0] * 10 + [1] * 10)
    decision = decide(GateSpec(), {"math": domain("math", base, cand)}, ["math"])
    assert decision.promote
    (evidence,) = decision.evidence
    assert evidence.outcome == "improved" and evidence.metric.estimate == pytest.approx(0.5) and evidence.metric.low > 0.3
    assert "math: retrained, metric 0.750 vs base 0.250, difference +0.500 [" in evidence.reason and "(95%, n=40)" in evidence.reason


def test_noise_level_differences_are_no_measurable_change_and_do_not_promote():
    base = score("law", [1, 0] * 12)
    cand = score("law", [0, 1, 1, 0] * 3 + [1, 0] * 6)  # 24 items: 3 gained, 3 lost -> +0.000 with a wide interval
    cand = score("law", list(cand.item_scores[:-2]) + [1.0, 1.0])  # and 1 more gained: +0.042, noise
    decision = decide(GateSpec(), {"law": domain("law", base, cand)}, ["law"])
    (evidence,) = decision.evidence
    assert not decision.promote and evidence.outcome == "no measurable change" and "FAILS" in evidence.reason
    assert evidence.metric.low < 0 < evidence.metric.high and evidence.metric.detectable > abs(evidence.metric.estimate)
    untouched = decide(GateSpec(), {"law": domain("law", base, cand)}, [])
    assert untouched.promote and untouched.evidence[0].outcome == "no measurable change"


def test_zero_versus_zero_never_reads_as_an_improvement():
    zeros = score("code", [0] * 8)
    decision = decide(GateSpec(), {"code": domain("code", zeros, zeros)}, ["code"])
    assert not decision.promote
    assert decision.evidence[0].reason.startswith("code: retrained, metric 0.000 vs base 0.000, difference +0.000 [+0.000, +0.000] (95%, n=8)")
    assert "no measurable change" in decision.evidence[0].reason


def test_a_clear_regression_in_an_untouched_domain_rejects():
    champion = score("medical", [1] * 30 + [0] * 10, route="medical")
    worse = score("medical", [0] * 25 + [0] * 5 + [0] * 10, route="medical-new")
    base = score("math", [0] * 30 + [1] * 10)
    better = score("math", [1] * 40)
    scores = {"math": domain("math", base, better), "medical": domain("medical", score("medical", [0] * 40), worse, champion)}
    decision = decide(GateSpec(), scores, ["math"])
    assert not decision.promote
    medical = next(e for e in decision.evidence if e.domain == "medical")
    assert medical.reference == "champion" and medical.outcome == "regressed" and "REGRESSED" in medical.reason
    assert decide(GateSpec(tolerance=1.0), scores, ["math"]).promote  # a tolerance that large forgives it


def test_non_inferiority_accepts_a_tie_within_tolerance_only_when_asked():
    base = score("sql", [1, 0] * 50)
    tie = score("sql", [1, 0] * 50)
    scores = {"sql": domain("sql", base, tie)}
    assert not decide(GateSpec(), scores, ["sql"]).promote
    assert decide(GateSpec(retrained="non-inferiority", tolerance=0.05), scores, ["sql"]).promote
    assert not decide(GateSpec(retrained="non-inferiority", tolerance=0.0), scores, ["sql"]).promote


def test_an_unscored_custom_domain_is_never_promoted():
    math = domain("math", score("math", [0] * 40), score("math", [1] * 40))
    decision = decide(GateSpec(margin=0.1), {"math": math}, ["math", "contracts"])
    assert not decision.promote
    contracts = next(e for e in decision.evidence if e.domain == "contracts")
    assert contracts.outcome == "unscored" and "REFUSED" in contracts.reason and "val_fraction" in contracts.reason


def test_a_custom_domain_is_judged_on_held_out_loss():
    base = score("contracts", None, nll=[3.0 + 0.1 * (i % 5) for i in range(20)])
    better = score("contracts", None, nll=[2.0 + 0.1 * (i % 5) for i in range(20)])
    decision = decide(GateSpec(), {"contracts": domain("contracts", base, better)}, ["contracts"])
    (evidence,) = decision.evidence
    assert decision.promote and evidence.basis == "loss" and evidence.metric is None
    assert evidence.loss.estimate == pytest.approx(1.0) and "NLL 2.200 vs base 3.200, decrease +1.000" in evidence.reason
    assert not decide(GateSpec(loss_margin=1.5), {"contracts": domain("contracts", base, better)}, ["contracts"]).promote
    worse = decide(GateSpec(), {"contracts": domain("contracts", better, base)}, ["contracts"])
    assert not worse.promote and worse.evidence[0].outcome == "regressed"


def test_basis_loss_judges_a_scored_domain_on_nll():
    base = score("math", [0] * 10, nll=[3.0] * 10)
    cand = score("math", [0] * 10, nll=[2.5 + 0.01 * i for i in range(10)])
    scores = {"math": domain("math", base, cand)}
    assert not decide(GateSpec(), scores, ["math"]).promote  # the metric did not move
    assert decide(GateSpec(basis={"math": "loss"}), scores, ["math"]).promote


def test_items_that_differ_between_models_are_an_error():
    with pytest.raises(ValueError, match="different items"):
        decide(GateSpec(), {"math": domain("math", score("math", [0] * 5), score("math", [0] * 6))}, ["math"])


def test_rows_and_chart_carry_the_intervals(tmp_path):
    scores = {"math": domain("math", score("math", [0] * 30 + [1] * 10), score("math", [1] * 40))}
    decision = decide(GateSpec(), scores, ["math", "contracts"])
    rows = evidence_rows(scores, decision)
    assert [r["domain"] for r in rows] == ["contracts", "math"]
    math = rows[1]
    assert (math["n"], math["diff"], math["basis"], math["outcome"], math["ok"]) == (40, 0.75, "metric", "improved", True)
    assert math["diff_low"] > 0.5 and math["diff_high"] <= 0.9
    assert (rows[0]["outcome"], rows[0]["ok"], rows[0]["diff"], rows[0]["candidate_metric"]) == ("unscored", False, None, None)
    path = bar_chart(rows, tmp_path / "gate.png", "test")
    assert path.stat().st_size > 5000


def test_a_diverged_candidate_is_a_regression_not_noise():
    base = score("math", [0] * 6)
    diverged = score("math", [0] * 6, nll=[float("nan")] * 6)
    decision = decide(GateSpec(), {"math": domain("math", base, diverged)}, ["math"])
    assert not decision.promote and decision.evidence[0].outcome == "regressed" and "NLL is not finite" in decision.evidence[0].reason


def test_routing_that_drops_significantly_refuses_the_candidate_and_no_change_passes():
    gate = GateSpec()
    same = RoutingScores("champion", (1.0,) * 18 + (0.0,) * 2, (1.0,) * 18 + (0.0,) * 2)
    kept = judge_routing(gate, same)
    assert (kept.domain, kept.outcome, kept.ok, kept.metric.estimate) == ("routing", "no measurable change", True, 0.0)
    assert kept.reason.startswith("routing: accuracy 0.900 vs champion 0.900 on 20 labelled queries")
    worse = RoutingScores("rules", (1.0,) * 10 + (0.0,) * 10, (1.0,) * 20)
    dropped = judge_routing(gate, worse)
    assert (dropped.outcome, dropped.ok) == ("regressed", False) and dropped.metric.high < 0 and "REFUSED" in dropped.reason
    assert decide(gate, {}, [], worse).promote is False and decide(gate, {}, [], same).promote is True
    with pytest.raises(ValueError, match="same non-empty list"):
        judge_routing(gate, RoutingScores("rules", (1.0,), ()))
