"""analysis.fragility: near ties of tier, policy and expert decisions."""

from __future__ import annotations

import math

import pytest
from trace_frames import make_frame

from analysis.fragility import fragile_tokens, margin_figure, near_tie_table


def frame():
    return make_frame([
        # score 0.71: 0.01 from theta_d (tier near tie); expert margin 0.5 (clear)
        {"position": 0, "token": "a", "score": 0.71, "expert_margin": 0.5},
        # in band, P(deep) 0.51: policy near tie; expert margin 0.001 (near tie)
        {"position": 1, "token": "b", "score": 0.5, "in_band": True, "p_deep": 0.51,
         "expert_margin": 0.001},
        # one-tier row (tier "none"): only the expert margin applies
        {"position": 2, "token": "c", "tier": "none", "score": math.nan,
         "expert_margin": 0.015, "layer": 1},
        # every expert picked: no expert margin
        {"position": 3, "token": "d", "score": 0.2, "expert_margin": math.nan, "layer": 1}])


def test_near_tie_rates_per_layer_and_overall():
    table = near_tie_table(frame(), epsilon=0.02).set_index("layer")
    assert table.loc["0", "tier_near_tie_rate"] == 0.5  # 0.01 of 0.01, 0.2
    assert table.loc["0", "policy_decisions"] == 1 and table.loc["0", "policy_near_tie_rate"] == 1
    assert table.loc["0", "expert_near_tie_rate"] == 0.5
    assert table.loc["1", "tier_decisions"] == 1  # the "none" row has no tier margin
    assert table.loc["1", "expert_decisions"] == 1  # NaN margin left out
    assert table.loc["all", "expert_near_tie_rate"] == pytest.approx(2 / 3)
    assert math.isnan(table.loc["1", "policy_near_tie_rate"])


def test_fragile_tokens_are_sorted_by_margin_with_expert_names():
    out = fragile_tokens(frame(), "expert", n=2)
    assert out["token"].tolist() == ["b", "c"]
    assert out["experts"].iloc[0] == ["D0", "D1"]
    with pytest.raises(ValueError, match="kind"):
        fragile_tokens(frame(), "gate")


def test_margin_figure_marks_epsilon_and_handles_missing_margins():
    fig = margin_figure(frame(), "tier", epsilon=0.05)
    assert len(fig.data) == 2  # one histogram per layer
    assert any(shape.x0 == 0.05 for shape in fig.layout.shapes)
    empty = margin_figure(frame().assign(in_band=False), "policy")
    assert not empty.data and "no policy margins" in empty.layout.annotations[-1].text
