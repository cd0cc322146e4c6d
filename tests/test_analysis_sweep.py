"""analysis.sweep: grid syntax, Pareto front, per-pair summaries."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.sweep import pareto_front, parse_grid, primary_metric, summarise_pair


def test_grid_keeps_ordered_pairs_only():
    assert parse_grid("0.1,0.3:0.2,0.9") == [(0.1, 0.2), (0.1, 0.9), (0.3, 0.9)]
    assert parse_grid(" 0.3 : 0.7 ") == [(0.3, 0.7)]
    assert parse_grid("0.5,0.5:0.5") == [(0.5, 0.5)]  # equal thresholds are allowed


@pytest.mark.parametrize("spec, message", [
    ("0.1,0.2", "colon"), ("0.1:0.2:0.3", "colon"), ("a:0.5", "numbers"),
    ("0.9:0.1", "theta_s <= theta_d"), ("0.1:1.5", r"\[0, 1\]"), (":0.5", "no theta_s")])
def test_grid_errors_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(spec)


def test_pareto_front_known_points():
    table = pd.DataFrame({"f1": [0.80, 0.78, 0.70, 0.79, 0.80, math.nan],
                          "flops_per_token": [100, 80, 50, 90, 120, 10]})
    # (0.80,120) is dominated by (0.80,100); (0.79,90) by nobody; NaN never on the front.
    assert pareto_front(table, "f1").tolist() == [True, True, True, True, False, False]


def test_primary_metric_is_f1_where_reported():
    assert primary_metric("mrpc") == "f1"
    assert primary_metric("sst2") == "accuracy"
    assert primary_metric("cola") == "matthews"


def test_summarise_pair_pools_over_examples():
    frame = pd.DataFrame({"label": [1, 0], "prediction": [1, 1], "prob": [0.9, 0.8],
                          "n_tokens": [4, 2], "flops": [40.0, 20.0],
                          "deep_decisions": [2.0, 2.0], "tier_decisions": [8.0, 4.0],
                          "expert_slots": [16.0, 8.0], "moe_tokens": [8.0, 4.0],
                          "overrouted_decisions": [1.0, 2.0], "simple_decisions": [3.0, 3.0]})
    s = summarise_pair("mrpc", frame)
    assert s["accuracy"] == 0.5
    assert s["deep_tier_rate"] == pytest.approx(4 / 12)
    assert s["flops_per_token"] == pytest.approx(10.0)
    assert s["overrouting_index"] == pytest.approx(3 / 4)
    assert s["overrouting_rate"] == pytest.approx(3 / 12)
    assert s["simple_deep_rate"] == pytest.approx(3 / 6)
