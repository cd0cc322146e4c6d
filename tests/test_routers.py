"""Specification of dasg_moe.routers (DESIGN.md §2.3, §2.5): the pure routing functions.

top_k_gates (Switch and GShard gates), dynamic_k (DA-MoE), choose_tier (ADR's global router)
and RoutingOverrides (per-call thresholds). The layers that use them are in test_moe.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from dasg_moe.config import DasgConfig
from dasg_moe.routers import RoutingOverrides, choose_tier, dynamic_k, top_k_gates

# --- local routers ------------------------------------------------------------------------


def test_top2_gates_are_the_two_largest_probs_renormalised():
    logits = torch.randn(9, 5)
    local = top_k_gates(logits, 2)
    probs = logits.softmax(-1)
    top = probs.topk(2, dim=-1)
    assert torch.equal(local.expert_idx, top.indices)
    torch.testing.assert_close(local.gate, top.values / top.values.sum(-1, keepdim=True))
    torch.testing.assert_close(local.gate.sum(-1), torch.ones(9))
    torch.testing.assert_close(local.probs, probs)


def test_switch_top1_keeps_the_raw_probability_as_gate():
    logits = torch.randn(9, 5)
    local = top_k_gates(logits, 1)
    top = logits.softmax(-1).max(-1)
    assert torch.equal(local.expert_idx[:, 0], top.indices)
    torch.testing.assert_close(local.gate[:, 0], top.values)
    assert torch.equal(top_k_gates(torch.randn(4, 1), 1).gate, torch.ones(4, 1))


def test_per_token_k_marks_unused_slots_and_renormalises_the_rest():
    logits = torch.randn(3, 4)
    local = top_k_gates(logits, torch.tensor([1, 2, 3]))
    assert local.expert_idx.shape == (3, 3)
    assert (local.expert_idx >= 0).sum(-1).tolist() == [1, 2, 3]
    assert (local.gate[local.expert_idx < 0] == 0).all()
    torch.testing.assert_close(local.gate[0, 0], logits.softmax(-1)[0].max())  # K=1: raw
    torch.testing.assert_close(local.gate[1:].sum(-1), torch.ones(2))


def test_dynamic_k_is_ceil_of_k_max_times_importance_clamped_and_monotone():
    importance = torch.tensor([0.0, 0.1, 0.25, 0.26, 0.5, 0.74, 0.76, 1.0])
    assert dynamic_k(importance, 4).tolist() == [1, 1, 1, 2, 2, 3, 4, 4]
    grid = torch.linspace(0, 1, 101)
    k = dynamic_k(grid, 4)
    assert (k[1:] >= k[:-1]).all() and k.min() == 1 and k.max() == 4
    assert (dynamic_k(grid, 1) == 1).all()


# --- global router (tier choice) ----------------------------------------------------------


def test_choose_tier_thresholds_decide_outside_the_band_and_the_policy_inside():
    score = torch.tensor([0.1, 0.29, 0.3, 0.5, 0.5, 0.7, 0.71, 0.95])
    logit = torch.tensor([9.0, 9.0, -1.0, 2.0, -2.0, 1.0, -9.0, -9.0])  # policy says
    d = choose_tier(score, logit, 0.3, 0.7, sample=False)
    assert d.in_band.tolist() == [False, False, True, True, True, True, False, False]
    assert d.deep.tolist() == [False, False, False, True, False, True, True, True]
    torch.testing.assert_close(d.p_deep, torch.sigmoid(logit))
    in_band_lp = torch.where(d.deep, torch.sigmoid(logit), 1 - torch.sigmoid(logit)).log()
    torch.testing.assert_close(d.log_prob, torch.where(d.in_band, in_band_lp, 0.0))


def test_choose_tier_sampling_draws_in_band_decisions_and_log_prob_is_zero_outside():
    torch.manual_seed(0)
    n = 4000
    score = torch.cat([torch.full((n,), 0.5), torch.full((n,), 0.1), torch.full((n,), 0.9)])
    logit = torch.zeros(3 * n)  # p_deep = 0.5 everywhere
    d = choose_tier(score, logit, 0.3, 0.7, sample=True)
    band = d.deep[:n].float()
    assert 0.45 < band.mean() < 0.55  # a fair coin inside the band...
    assert not d.deep[n:2 * n].any() and d.deep[2 * n:].all()  # ...thresholds outside
    assert (d.log_prob[n:] == 0).all()
    torch.testing.assert_close(d.log_prob[:n], torch.full((n,), math.log(0.5)))
    # Two draws differ (sampling), the argmax path does not.
    assert not torch.equal(band, choose_tier(score, logit, 0.3, 0.7, sample=True).deep[:n].float())
    assert torch.equal(choose_tier(score, logit, 0.3, 0.7, False).deep,
                       choose_tier(score, logit, 0.3, 0.7, False).deep)


@pytest.mark.parametrize("tier", ["shallow", "deep"])
def test_force_tier_overrides_scores_and_policy(tier):
    score = torch.tensor([0.0, 0.5, 1.0])
    d = choose_tier(score, torch.zeros(3), 0.3, 0.7, sample=True, force_tier=tier)
    assert d.deep.tolist() == [tier == "deep"] * 3
    assert not d.in_band.any() and (d.log_prob == 0).all()


# --- per-call overrides ---------------------------------------------------------------------


def test_overrides_default_to_the_config_and_replace_single_thresholds():
    cfg = DasgConfig(theta_s=0.3, theta_d=0.7)
    assert RoutingOverrides().thresholds(cfg) == (0.3, 0.7)
    assert RoutingOverrides(theta_s=0.1).thresholds(cfg) == (0.1, 0.7)
    assert RoutingOverrides(theta_d=0.9).thresholds(cfg) == (0.3, 0.9)
    assert RoutingOverrides(0.0, 1.0).thresholds(cfg) == (0.0, 1.0)


@pytest.mark.parametrize("overrides", [
    RoutingOverrides(theta_s=0.8), RoutingOverrides(theta_d=0.2),
    RoutingOverrides(theta_s=-0.1), RoutingOverrides(theta_d=1.5),
    RoutingOverrides(theta_s=float("nan")), RoutingOverrides(theta_d=float("inf")),
    RoutingOverrides(force_tier="middle")])
def test_invalid_overrides_raise_value_error(overrides):
    with pytest.raises(ValueError, match="theta_s|force_tier"):
        overrides.thresholds(DasgConfig())
