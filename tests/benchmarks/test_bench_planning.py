"""The planning report's single-domain goal: planned vs routed seconds, and how often the planner ran."""

import json
from pathlib import Path

import pytest

from benchmarks.bench_planning import report

RECORD = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "planning.json"


def _row(domain: str, routed_s: float, planned_s: float, everyone_s: float, calls: int) -> dict:
    rate = {"k": 10, "n": 20, "rate": 0.5, "low": 0.27, "high": 0.73}
    return {"domain": domain, "n": 20, "routed": rate, "planned": rate, "everyone": rate, "diff": "+0.000 [+0.000, +0.000] (95%, n=20)",
            "one_step": 20, "fallbacks": 0, "planned_to_domain": 20, "planner_calls": calls, "everyone_one_step": 20, "reused_prompts": 20,
            "same_answers": 20, "same_plans": 20, "routed_s": routed_s, "planned_s": planned_s, "plan_s": 0.1, "everyone_s": everyone_s,
            "everyone_plan_s": 0.2}


@pytest.mark.parametrize("planned_s, calls, verdict, overhead", [
    (1.6, 2, "missed", "+6.7%"),  # the planner ran for some and the planned path measured slower
    (1.4, 2, "met", "-6.7%"),  # measured faster
    (1.53, 0, "met", "+2.0%"),  # the planner never ran: the same call as routing, the difference is the machine's noise
])
def test_the_overhead_goal_is_judged_on_the_planner_calls_and_the_measured_seconds(planned_s, calls, verdict, overhead):
    record = json.loads(RECORD.read_text())
    record["single_domain"] = [_row("math", 1.5, planned_s, 1.8, calls), _row("sql", 2.0, 2.0 * planned_s / 1.5, 2.6, 0)]
    text = report(record)
    assert f'costs no more than routing": **{verdict}**: the planner ran for {calls}/40 of them' in text
    assert f"planned minus routed is at most {overhead} of the routed call's time, against +30% when the planner plans every query" in text
    assert "| math | 20 |" in text and "1.50 / " + f"{planned_s:.2f} (0.10) / 1.80 (0.20) |" in text
    assert f"| {calls}/20 (20 one-step plans to math, 0 fallbacks) |" in text
