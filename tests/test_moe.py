"""Specification of dasg_moe.moe: the MoE layers (DESIGN.md §2.3, §2.5).

Reductions first (MegaBlocks style: each router collapses to a simpler one that is easy to
trust), then DASG-MoE's behaviour with fakes (torchtitan style: the evaluator's score is
fixed and the experts are spied on), then per-call overrides on a whole model.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dasg_moe.config import DasgConfig
from dasg_moe.model import DasgMoEModel
from dasg_moe.moe import DAMoE, DASGMoE, DenseFFN, MHMoE, MoEInput, TopKMoE
from dasg_moe.routers import RoutingOverrides, dynamic_k

D, T = 32, 10


def tiny(**overrides) -> DasgConfig:
    base = dict(vocab_size=100, max_len=16, d_model=D, n_layers=2, n_heads=4, n_groups=2,
                window=4, group_mlp_dim=8, n_shallow=4, n_deep=4, d_ff=32, d_ff_deep=16,
                k_max=4, mh_heads=2, dropout=0.0)
    return DasgConfig(**{**base, **overrides})


def moe_input(x: torch.Tensor, importance: torch.Tensor | None = None,
              theta_s: float = 0.3, theta_d: float = 0.7, **kw) -> MoEInput:
    n = x.shape[0]
    importance = torch.rand(n) if importance is None else importance
    return MoEInput(x, importance, torch.rand(n), theta_s, theta_d, **kw)


def copy_experts(dst, src) -> None:
    with torch.no_grad():
        for name in ("w_in", "b_in", "w_out", "b_out"):
            getattr(dst, name).copy_(getattr(src, name))


# --- 1. reductions ----------------------------------------------------------------------


def test_top1_moe_with_one_expert_equals_a_dense_ffn_forward_and_gradients():
    torch.manual_seed(0)
    cfg = tiny(router="switch", n_shallow=1, top_k=1)
    moe, dense = TopKMoE(cfg, k=1), DenseFFN(cfg)
    copy_experts(dense.experts, moe.experts)
    x = torch.randn(T, D)
    x_moe, x_dense = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_moe = moe(moe_input(x_moe))
    out_dense = dense(moe_input(x_dense))
    assert torch.equal(out_moe.gate, torch.ones(T, 1, 1))  # Switch gate = raw prob = 1.0
    torch.testing.assert_close(out_moe.out, out_dense.out, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_moe.flops, out_dense.flops)

    cotangent = torch.randn(T, D)
    (out_moe.out * cotangent).sum().backward()
    (out_dense.out * cotangent).sum().backward()
    torch.testing.assert_close(x_moe.grad, x_dense.grad, atol=1e-6, rtol=0)
    for name in ("w_in", "b_in", "w_out", "b_out"):
        torch.testing.assert_close(getattr(moe.experts, name).grad,
                                   getattr(dense.experts, name).grad, atol=1e-6, rtol=0)
    assert moe.router.gate.weight.grad.abs().max() == 0  # softmax over one expert is flat


@pytest.mark.parametrize("router", ["switch", "topk", "da_moe", "dasg"])
def test_shared_expert_adds_its_own_ffn_and_flops_to_every_token(router):
    """A layer with a shared expert = the same layer without it + a dense FFN of width
    d_ff_shared, on the output and on the FLOPs of every token."""
    torch.manual_seed(0)
    cfg = tiny(router=router, shared_expert=True, d_ff_shared=48)
    plain_cfg = dataclasses.replace(cfg, shared_expert=False)
    layer_type = {"switch": TopKMoE, "topk": TopKMoE, "da_moe": DAMoE, "dasg": DASGMoE}[router]
    args = {"switch": (1,), "topk": (2,), "da_moe": (), "dasg": (1,)}[router]
    with_shared, plain = layer_type(cfg, *args), layer_type(plain_cfg, *args)
    plain.load_state_dict({k: v for k, v in with_shared.state_dict().items()
                           if not k.startswith("shared.")})
    dense = DenseFFN(dataclasses.replace(cfg, router="dense", d_ff_dense=48))
    copy_experts(dense.experts, with_shared.shared)
    inp = moe_input(torch.randn(T, D))
    out, ref, ffn = with_shared.eval()(inp), plain.eval()(inp), dense(inp)
    torch.testing.assert_close(out.out, ref.out + ffn.out)
    torch.testing.assert_close(out.flops, ref.flops + 4 * D * 48)
    assert torch.equal(out.expert_idx, ref.expert_idx)


def test_mh_moe_with_one_head_and_identity_split_merge_equals_top2():
    torch.manual_seed(0)
    cfg = tiny(router="mh_moe", mh_heads=1)
    mh, topk = MHMoE(cfg), TopKMoE(tiny(router="topk"), k=2)
    with torch.no_grad():
        for layer in (mh.split, mh.merge):
            layer.weight.copy_(torch.eye(D))
            layer.bias.zero_()
        mh.router.gate.weight.copy_(topk.router.gate.weight)
    copy_experts(mh.experts, topk.experts)
    x = torch.randn(T, D)
    a, b = mh(moe_input(x)), topk(moe_input(x))
    torch.testing.assert_close(a.out, b.out, atol=1e-6, rtol=0)
    assert torch.equal(a.expert_idx, b.expert_idx)
    torch.testing.assert_close(a.gate, b.gate)
    torch.testing.assert_close(a.flops, b.flops)
    torch.testing.assert_close(a.aux["balance"], b.aux["balance"])


def test_da_moe_with_k_max_one_equals_switch():
    torch.manual_seed(0)
    da = DAMoE(tiny(router="da_moe", k_max=1))
    switch = TopKMoE(tiny(router="switch"), k=1)
    switch.load_state_dict(da.state_dict())
    x = torch.randn(T, D)
    a, b = da(moe_input(x)), switch(moe_input(x))  # importance is irrelevant with K_max=1
    torch.testing.assert_close(a.out, b.out, atol=1e-6, rtol=0)
    assert torch.equal(a.expert_idx, b.expert_idx)
    torch.testing.assert_close(a.gate, b.gate)
    torch.testing.assert_close(a.aux["balance"], b.aux["balance"])


def test_da_moe_gives_more_experts_to_more_important_tokens():
    torch.manual_seed(0)
    da = DAMoE(tiny(router="da_moe", k_max=4))
    importance = torch.linspace(0.0, 1.0, T)
    out = da(moe_input(torch.randn(T, D), importance))
    n_experts = (out.expert_idx >= 0).sum(dim=(1, 2))  # [T]
    assert torch.equal(n_experts, dynamic_k(importance, 4))
    assert (n_experts[1:] >= n_experts[:-1]).all() and n_experts[0] == 1 and n_experts[-1] == 4
    several = n_experts > 1
    torch.testing.assert_close(out.gate.sum(dim=(1, 2))[several], torch.ones(T)[several])
    assert torch.equal(out.tokens_per_expert.sum(), n_experts.sum())


def test_da_moe_in_the_model_follows_the_traced_importance():
    torch.manual_seed(0)
    model = DasgMoEModel(tiny(router="da_moe")).eval()
    ids = torch.randint(5, 100, (2, 14))
    frame = model(ids, trace=True).trace.to_frame()
    expected = dynamic_k(torch.tensor(frame["importance"].to_numpy()), 4)
    assert frame["n_experts"].tolist() == expected.tolist()
    assert frame["n_experts"].nunique() > 1  # the test means something


# --- 2. DASG-MoE with a fixed evaluator score -------------------------------------------


@pytest.fixture()
def dasg(monkeypatch):
    """A DASG layer whose expert calls are counted (rows per tier) and whose evaluator score
    can be fixed with `dasg.fix_score(value)`."""
    torch.manual_seed(0)
    layer = DASGMoE(tiny(), layer=0).eval()
    layer.rows = {"shallow": 0, "deep": 0}
    for tier in ("shallow", "deep"):
        experts = getattr(layer, tier)
        original = experts.expert_forward

        def counted(e, x, tier=tier, original=original):
            layer.rows[tier] += x.shape[0]
            return original(e, x)

        monkeypatch.setattr(experts, "expert_forward", counted)

    def fix_score(value: float) -> None:
        def fixed(x, importance, entropy):
            n = x.shape[0]
            return torch.full((n,), 0.5), torch.full((n,), value)

        monkeypatch.setattr(layer.evaluator, "forward", fixed)

    layer.fix_score = fix_score
    return layer


def test_score_below_theta_s_sends_every_token_shallow_and_never_calls_deep(dasg):
    dasg.fix_score(0.1)
    out = dasg(moe_input(torch.randn(T, D)))
    assert (out.tier == 0).all() and not out.in_band.any()
    assert dasg.rows == {"shallow": 2 * T, "deep": 0}  # two picks per token, all shallow
    assert (out.expert_idx < 4).all() and (out.expert_idx >= 0).all()
    assert (out.router_probs[..., 4:] == 0).all()


def test_score_above_theta_d_sends_every_token_deep_and_never_calls_shallow(dasg):
    dasg.fix_score(0.9)
    out = dasg(moe_input(torch.randn(T, D)))
    assert (out.tier == 1).all() and not out.in_band.any()
    assert dasg.rows == {"shallow": 0, "deep": 2 * T}
    assert (out.expert_idx >= 4).all()
    torch.testing.assert_close(out.flops, torch.full((T,), 2.0 * dasg.deep.flops_per_token()))


def test_score_in_the_band_lets_the_policy_decide(dasg, monkeypatch):
    dasg.fix_score(0.5)
    policy_logit = torch.tensor([3.0, -3.0] * (T // 2))
    monkeypatch.setattr(dasg.policy, "forward", lambda *args: policy_logit)
    out = dasg(moe_input(torch.randn(T, D)))
    assert out.in_band.all()
    assert torch.equal(out.tier, (policy_logit > 0).to(torch.int8))
    torch.testing.assert_close(out.p_deep, torch.sigmoid(policy_logit))
    assert dasg.rows == {"shallow": T, "deep": T}


def test_the_untrained_policy_splits_the_band_at_its_middle(dasg):
    for value, tier in [(0.4, 0), (0.6, 1)]:
        dasg.fix_score(value)
        out = dasg(moe_input(torch.randn(T, D)))
        assert out.in_band.all() and (out.tier == tier).all()


@pytest.mark.parametrize("score", [0.1, 0.5, 0.9])
def test_gate_weights_of_the_two_picks_sum_to_one(dasg, score):
    dasg.fix_score(score)
    out = dasg(moe_input(torch.randn(T, D)))
    assert (out.expert_idx >= 0).sum(-1).eq(2).all()
    torch.testing.assert_close(out.gate.sum(-1), torch.ones(T, 1))
    assert out.expert_idx[:, 0, 0].ne(out.expert_idx[:, 0, 1]).all()


def test_thresholds_of_the_call_decide_not_the_config(dasg):
    dasg.fix_score(0.5)
    x = torch.randn(T, D)
    assert (dasg(moe_input(x, theta_s=0.6, theta_d=0.8)).tier == 0).all()
    assert (dasg(moe_input(x, theta_s=0.1, theta_d=0.4)).tier == 1).all()


@pytest.mark.parametrize(("force", "tier"), [("shallow", 0), ("deep", 1)])
def test_force_tier_ignores_the_score(dasg, force, tier):
    dasg.fix_score(0.9 if force == "shallow" else 0.1)
    out = dasg(moe_input(torch.randn(T, D), force_tier=force))
    assert (out.tier == tier).all() and not out.in_band.any()
    assert dasg.rows[force] == 2 * T and sum(dasg.rows.values()) == 2 * T


def test_score_is_a_convex_mix_of_importance_and_complexity_in_unit_range():
    torch.manual_seed(0)
    layer = DASGMoE(tiny(), layer=0)
    importance = torch.linspace(0, 1, T)
    complexity, score = layer.evaluator(torch.randn(T, D), importance, torch.rand(T))
    assert ((complexity > 0) & (complexity < 1)).all()
    torch.testing.assert_close(score, 0.5 * importance + 0.5 * complexity)  # lam starts at 0.5


# --- 3. the same rules on a whole model, per call -------------------------------------


def test_overrides_change_decisions_per_call_without_mutating_the_model():
    torch.manual_seed(0)
    cfg = tiny()
    model = DasgMoEModel(cfg).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(5, 100, (2, 14))

    def tiers(overrides=None):
        trace = model(ids, trace=True, overrides=overrides).trace
        return torch.stack([r.tier for r in trace.records])  # [layers, B, L]

    before = tiers()
    assert (tiers(RoutingOverrides(theta_s=0.0, theta_d=0.0)) == 1).all()
    assert (tiers(RoutingOverrides(theta_s=1.0, theta_d=1.0)) == 0).all()
    assert (tiers(RoutingOverrides(force_tier="deep")) == 1).all()
    assert torch.equal(tiers(), before)  # nothing stuck
    assert model.config == cfg and (model.config.theta_s, model.config.theta_d) == (0.3, 0.7)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="theta_s"):
        model(ids, overrides=RoutingOverrides(theta_s=0.9, theta_d=0.1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.theta_s = 0.1  # type: ignore[misc]


def test_thresholds_in_force_are_recorded_in_the_trace():
    torch.manual_seed(0)
    model = DasgMoEModel(tiny()).eval()
    ids = torch.randint(5, 100, (1, 9))
    frame = model(ids, trace=True, overrides=RoutingOverrides(0.2, 0.8)).trace.to_frame()
    assert set(frame["theta_s"]) == {0.2} and set(frame["theta_d"]) == {0.8}


def test_random_router_is_deterministic_in_eval_mode():
    torch.manual_seed(0)
    model = DasgMoEModel(tiny(router="random")).eval()
    ids = torch.randint(5, 100, (2, 14))
    a, b = model(ids, trace=True), model(ids, trace=True)
    assert torch.equal(a.logits, b.logits)
    for ra, rb in zip(a.trace.records, b.trace.records, strict=True):
        assert torch.equal(ra.tier, rb.tier) and torch.equal(ra.expert_idx, rb.expert_idx)
    tiers = torch.cat([r.tier[r.token_mask] for r in a.trace.records])
    assert set(tiers.tolist()) == {0, 1}  # a coin, not a constant


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_head_reads_cls_or_the_mean_of_real_tokens_and_ignores_padding(pooling):
    torch.manual_seed(0)
    model = DasgMoEModel(tiny(router="dense", attention="mha", pooling=pooling)).eval()
    ids = torch.randint(5, 100, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).long()
    with torch.no_grad():
        hidden, *_ = model.encode(ids)
        summary = hidden[:, 0] if pooling == "cls" else hidden.mean(1)
        expected = model.classifier(torch.tanh(model.pooler(summary)))
        torch.testing.assert_close(model(ids).logits, expected)
        torch.testing.assert_close(model(padded, mask).logits, expected, atol=1e-5, rtol=1e-5)
