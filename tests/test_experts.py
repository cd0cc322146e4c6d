"""Specification of dasg_moe.experts, DSSE (DESIGN.md §2.2).

Pre-training transfer copies a shallow expert's first layer into its deep twin and freezes
it: right after transfer the twins compute the same function, and no optimiser step (on the
expert alone or on the whole model) ever changes the frozen layer.
"""

from __future__ import annotations

import torch

from dasg_moe.config import DasgConfig
from dasg_moe.experts import DeepExperts, ShallowExperts
from dasg_moe.model import DasgMoEModel

D, F, FD = 32, 48, 16


def transferred(source=(2, 0, 1)) -> tuple[ShallowExperts, DeepExperts]:
    torch.manual_seed(0)
    shallow = ShallowExperts(3, D, F)
    deep = DeepExperts(len(source), D, F, FD)
    with torch.no_grad():  # a "pretrained" shallow tier: biases away from their zero init
        shallow.b_in.normal_()
        shallow.b_out.normal_()
    deep.transfer_from(shallow, source)
    return shallow, deep


def test_deep_expert_right_after_transfer_computes_its_shallow_twin():
    source = (2, 0, 1)
    shallow, deep = transferred(source)
    x = torch.randn(7, D)
    for e, s in enumerate(source):
        assert torch.equal(deep.w1[e], shallow.w_in[s])
        assert torch.equal(deep.b1[e], shallow.b_in[s])
        torch.testing.assert_close(deep.expert_forward(e, x), shallow.expert_forward(s, x),
                                   atol=1e-6, rtol=0)


def test_transferred_layer_is_a_copy_not_a_tie():
    shallow, deep = transferred()
    assert deep.w1.data_ptr() != shallow.w_in.data_ptr()
    with torch.no_grad():
        shallow.w_in.add_(1.0)
    assert not torch.equal(deep.w1[1], shallow.w_in[0])


def test_frozen_layer_gets_no_grad_and_survives_an_adamw_step():
    _, deep = transferred()
    assert not deep.w1.requires_grad and not deep.b1.requires_grad
    w1, b1 = deep.w1.clone(), deep.b1.clone()
    w2 = deep.w2.clone()
    trainable = [p for p in deep.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    x = torch.randn(5, D)
    sum(deep.expert_forward(e, x).square().sum() for e in range(deep.n_experts)).backward()
    assert deep.w1.grad is None and deep.b1.grad is None
    assert deep.w2.grad is not None and deep.w3.grad is not None
    opt.step()
    assert torch.equal(deep.w1, w1) and torch.equal(deep.b1, b1)  # bit-identical
    assert not torch.equal(deep.w2, w2)  # while the layers that train did move


def test_full_model_train_step_leaves_every_deep_first_layer_unchanged():
    torch.manual_seed(0)
    cfg = DasgConfig(vocab_size=100, max_len=16, d_model=D, n_layers=2, n_heads=4, n_groups=2,
                     window=4, group_mlp_dim=8, n_shallow=4, n_deep=4, d_ff=32, d_ff_deep=16,
                     dropout=0.0, theta_s=0.0, theta_d=0.0)  # every token deep: w1 is used
    model = DasgMoEModel(cfg).train()
    deep = model.deep_experts()
    assert len(deep) == cfg.n_layers
    frozen = [(d.w1.clone(), d.b1.clone()) for d in deep]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(5, 100, (3, 12))
    out = model(ids, torch.ones_like(ids), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    opt.step()
    assert out.deep_decisions.sum() > 0
    for d, (w1, b1) in zip(deep, frozen, strict=True):
        assert d.w1.grad is None
        assert torch.equal(d.w1, w1) and torch.equal(d.b1, b1)
        assert d.w2.grad is not None


def test_flops_per_token_counts_two_flops_per_multiply_add():
    assert ShallowExperts(3, D, F).flops_per_token() == 2 * (D * F + F * D)
    assert DeepExperts(3, D, F, FD).flops_per_token() == 2 * (D * F + F * FD + FD * F + F * D)
    # MH-MoE sub-token experts are narrower: the count follows the input width.
    assert ShallowExperts(2, D // 2, F).flops_per_token() == 2 * (D // 2 * F * 2)


def test_model_flops_reference_uses_the_same_formulas():
    cfg = DasgConfig(vocab_size=100, max_len=16, d_model=D, n_layers=1, n_heads=4, n_groups=2,
                     window=4, group_mlp_dim=8, n_shallow=4, n_deep=4, d_ff=F, d_ff_deep=FD)
    model = DasgMoEModel(cfg)
    ffn = model.blocks[0].ffn
    assert model.flops_reference() == {
        "all_shallow": 2.0 * ffn.shallow.flops_per_token(),
        "all_deep": 2.0 * ffn.deep.flops_per_token(),
        "dense": 4.0 * ffn.shallow.flops_per_token()}
