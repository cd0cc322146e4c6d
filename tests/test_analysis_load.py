"""analysis.load: expert load, confidence, co-activation, specialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from trace_frames import make_frame

from analysis.load import (
    coactivation,
    expert_load,
    load_summary,
    router_confidence,
    token_specialisation,
)


def frame():
    """Layer 0: shallow picks S0+S1 twice; deep picks D0+D1 once, D0 alone once (MH-MoE-like
    repeat counts once per token in co-activation). Layer 1: only S0 picked (S1, D0, D1 dead)."""
    rows = [
        {"position": 0, "token": "the", "tier": "shallow", "experts": [0, 1],
         "top_prob": 0.6, "expert_margin": 0.01},
        {"position": 1, "token": "the", "tier": "shallow", "experts": [0, 1],
         "top_prob": 0.8, "expert_margin": 0.3},
        {"position": 2, "token": "cat", "tier": "deep", "experts": [2, 3]},
        {"position": 3, "token": "cat", "tier": "deep", "experts": [2, 2]},
        {"position": 0, "token": "the", "tier": "shallow", "experts": [0], "layer": 1},
        {"position": 1, "token": "dense", "tier": "none", "experts": [0], "moe": False}]
    return make_frame(rows)


def test_expert_load_counts_every_expert():
    load = expert_load(frame()).set_index(["layer", "expert_label"])
    assert load.loc[(0, "S0"), "picks"] == 2 and load.loc[(0, "S0"), "share"] == 0.5
    assert load.loc[(0, "D0"), "picks"] == 3 and load.loc[(0, "D0"), "share"] == 0.75
    assert load.loc[(0, "D0"), "expert_tier"] == "deep"
    assert load.loc[(1, "D1"), "picks"] == 0 and math.isnan(load.loc[(1, "D1"), "share"])
    assert load.loc[(0, "S1"), "gate_mass"] == pytest.approx(1.0)  # two gates of 0.5
    assert len(load) == 2 * 4  # dense rows left out, every layer x expert listed


def test_load_summary_entropy_cv_and_dead_experts():
    summary = load_summary(expert_load(frame())).set_index(["layer", "expert_tier"])
    even = summary.loc[(0, "shallow")]
    assert even["entropy"] == pytest.approx(1.0) and even["cv"] == 0.0 and even["dead"] == 0
    skewed = summary.loc[(0, "deep")]  # picks 3 and 1
    p = np.array([0.75, 0.25])
    assert skewed["entropy"] == pytest.approx(-(p * np.log(p)).sum() / np.log(2))
    assert skewed["cv"] == pytest.approx(np.std([3, 1]) / 2)
    assert skewed["max_share"] == 0.75
    one = summary.loc[(1, "shallow")]
    assert one["dead"] == 1 and one["dead_experts"] == "S1" and one["entropy"] == 0.0
    assert summary.loc[(1, "deep"), "picks"] == 0  # a tier nobody used: no dead count


def test_router_confidence_near_ties():
    conf = router_confidence(frame(), epsilon=0.02).set_index(["layer", "tier"])
    shallow = conf.loc[(0, "shallow")]
    assert shallow["decisions"] == 2 and shallow["mean_top_prob"] == pytest.approx(0.7)
    assert shallow["near_tie_rate"] == 0.5


def test_coactivation_counts_and_conditional():
    counts = coactivation(frame(), 0)
    assert counts.loc["S0", "S1"] == 2 and counts.loc["S0", "S0"] == 2
    assert counts.loc["D0", "D1"] == 1 and counts.loc["D0", "D0"] == 2  # [2, 2] counts once
    assert counts.loc["S0", "D0"] == 0
    cond = coactivation(frame(), 0, conditional=True)
    assert cond.loc["D0", "D1"] == 0.5 and cond.loc["D1", "D0"] == 1.0
    assert math.isnan(cond.loc["S0", "S0"]) is False and cond.loc["S0", "S0"] == 1.0


def test_token_specialisation_shares():
    spec = token_specialisation(frame(), min_count=2)
    s0 = spec[(spec["layer"] == 0) & (spec["expert_label"] == "S0")].iloc[0]
    assert s0["token"] == "the" and s0["count"] == 2 and s0["token_share"] == 1.0
    d1 = spec[(spec["layer"] == 0) & (spec["expert_label"] == "D1")].iloc[0]
    assert d1["token"] == "cat" and d1["token_share"] == 0.5 and d1["expert_share"] == 1.0
    assert spec[spec["layer"] == 1].empty  # "the" seen once in layer 1 < min_count
