"""Specification of dasg_moe.attention, GMHA (DESIGN.md §2.1).

In the order of STYLE.md §6: the reduction to ordinary multi-head attention first, then
locality (what a token can and cannot see), the short-input grouping rule, and the attention
statistics the evaluator reads. All on a tiny module: D=32, 4 heads, max_len 32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dasg_moe import attention
from dasg_moe.attention import GroupedMultiHeadAttention, group_count, window_mask
from dasg_moe.config import DasgConfig

D, H = 32, 4


def tiny(**overrides) -> DasgConfig:
    """Tiny GMHA: max_len 32 in 4 groups of M=8 tokens, window 4 (|i - j| <= 2)."""
    base = dict(vocab_size=100, max_len=32, d_model=D, n_layers=2, n_heads=H, n_groups=4,
                window=4, group_mlp_dim=8, d_ff=32, d_ff_deep=16, dropout=0.0)
    return DasgConfig(**{**base, **overrides})


def build(seed: int = 0, **overrides) -> GroupedMultiHeadAttention:
    torch.manual_seed(seed)
    return GroupedMultiHeadAttention(tiny(**overrides)).eval()


def make_nonzero(attn: GroupedMultiHeadAttention) -> None:
    """The fuse layer and the refinement output start at zero (the block starts local);
    give them weights so the long-range path and the per-group MLPs actually act."""
    with torch.no_grad():
        if attn.aggregate:
            attn.fuse.weight.normal_(0.0, 0.2)
            attn.fuse.bias.normal_(0.0, 0.2)
        if attn.refine:
            attn.refine_out.normal_(0.0, 0.2)


def padding_mask(lengths: list[int], L: int) -> torch.Tensor:
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # [B, L]


def reference_mha(attn: GroupedMultiHeadAttention, x: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention with the module's own weights, written independently."""
    B, L, _ = x.shape
    q, k, v = attn.qkv(x).split(D, dim=-1)  # 3 x [B, L, D]
    q, k, v = (t.view(B, L, H, D // H).transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    return attn.out_proj(out.transpose(1, 2).reshape(B, L, D))


# --- 1. reduction: one group, a window covering it, no aggregation = MHA ------------------


@pytest.mark.parametrize("need_stats", [False, True], ids=["sdpa", "explicit-softmax"])
@pytest.mark.parametrize("lengths", [[12, 12], [12, 7]], ids=["no-padding", "padding"])
def test_one_group_wide_window_no_aggregation_equals_sdpa_mha(need_stats, lengths):
    L = 12
    attn = build(n_groups=1, window=2 * L, aggregate_groups=False, refine_groups=False)
    x = torch.randn(2, L, D)
    mask = padding_mask(lengths, L)
    out = attn(x, mask, need_stats=need_stats)
    expected = reference_mha(attn, x, mask)
    assert out.n_groups == 1 and out.group_len == L
    torch.testing.assert_close(out.hidden[mask], expected[mask], atol=1e-5, rtol=0)


def test_mha_kind_equals_sdpa_mha():
    """attention="mha" is the same module with one group and nothing else."""
    L = 10
    attn = build(attention="mha")
    assert not attn.aggregate and not attn.refine and attn.window is None
    x, mask = torch.randn(2, L, D), padding_mask([10, 6], L)
    torch.testing.assert_close(attn(x, mask).hidden[mask], reference_mha(attn, x, mask)[mask],
                               atol=1e-5, rtol=0)


# --- 2. locality -------------------------------------------------------------------------


def influence(attn: GroupedMultiHeadAttention, x: torch.Tensor, need_stats: bool):
    """[L, L]: |d (r_i . out[i]) / d x[j]| summed over features, one backward pass per query
    token i with a random projection r_i (a zero block of the Jacobian gives exactly 0)."""
    L = x.shape[0]
    x = x.clone().requires_grad_(True)
    out = attn(x.unsqueeze(0), torch.ones(1, L, dtype=torch.bool), need_stats=need_stats)
    rows = []
    for i in range(L):
        (grad,) = torch.autograd.grad(out.hidden[0, i] @ torch.randn(D), x, retain_graph=True)
        rows.append(grad.abs().sum(-1))  # [L]
    return torch.stack(rows)  # [L, L]


@pytest.mark.parametrize("need_stats", [False, True], ids=["sdpa", "explicit-softmax"])
def test_without_aggregation_a_token_sees_only_its_group_and_window(need_stats):
    attn = build(aggregate_groups=False)
    make_nonzero(attn)  # the per-group MLPs must not leak across tokens either
    L, M, half = 32, 8, 2  # 4 groups of 8, |i - j| <= window // 2 = 2
    seen = influence(attn, torch.randn(L, D), need_stats)
    i, j = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    visible = (i // M == j // M) & ((i - j).abs() <= half)
    assert (seen[~visible] == 0).all(), "a token outside the group or window leaked in"
    assert (seen[visible] > 0).all()


def test_with_aggregation_other_groups_influence_every_token():
    attn = build(aggregate_groups=True)
    x = torch.randn(32, D)
    # Zero-initialised fuse: the block starts out purely local.
    i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    other_group = i // 8 != j // 8
    assert (influence(attn, x, False)[other_group] == 0).all()
    make_nonzero(attn)
    assert (influence(attn, x, False)[other_group] > 0).all()


def test_window_mask_is_the_band_and_none_when_it_covers_the_group():
    band = window_mask(6, 4, torch.device("cpu"))
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(band, (i - j).abs() <= 2)
    assert window_mask(6, 10, torch.device("cpu")) is None
    assert window_mask(6, None, torch.device("cpu")) is None


# --- 3. group count: short inputs use fewer groups, padding never moves a token ----------


@pytest.mark.parametrize(("seq_len", "expected"), [
    (32, (4, 8)), (17, (3, 8)), (9, (2, 8)), (8, (1, 8)), (5, (1, 5)), (1, (1, 1))])
def test_group_count_keeps_the_group_length_and_uses_fewer_groups(seq_len, expected):
    assert group_count(seq_len, group_len=8) == expected


def test_module_reports_the_grouping_it_used():
    attn = build()
    for L, (G, M) in [(32, (4, 8)), (13, (2, 8)), (5, (1, 5))]:
        out = attn(torch.randn(1, L, D), torch.ones(1, L, dtype=torch.bool), need_maps=True)
        assert (out.n_groups, out.group_len) == (G, M)
        assert out.local_probs.shape == (1, G, H, M, M)
        assert out.hidden.shape == (1, L, D)


@pytest.mark.parametrize("aggregate", [True, False])
def test_output_of_a_sentence_does_not_depend_on_the_padding_of_its_batch(aggregate):
    attn = build(aggregate_groups=aggregate)
    make_nonzero(attn)
    sentence = torch.randn(1, 11, D)
    alone = attn(sentence, torch.ones(1, 11, dtype=torch.bool), need_stats=True)
    # Padded to 27 tokens beside a longer sentence: 4 groups instead of 2.
    batch = torch.cat([F.pad(sentence, (0, 0, 0, 16)), torch.randn(1, 27, D)])
    padded = attn(batch, padding_mask([11, 27], 27), need_stats=True)
    assert (alone.n_groups, padded.n_groups) == (2, 4)
    torch.testing.assert_close(padded.hidden[0, :11], alone.hidden[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.received[0, :11], alone.received[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(padded.entropy[0, :11], alone.entropy[0], atol=1e-6, rtol=0)


# --- 4. attention statistics --------------------------------------------------------------


def test_received_is_column_sum_over_real_queries_mean_over_heads():
    attn = build()
    L, lengths = 20, [20, 13]
    mask = padding_mask(lengths, L)
    out = attn(torch.randn(2, L, D), mask, need_stats=True, need_maps=True)
    G, M = out.n_groups, out.group_len
    probs = out.local_probs  # [B, G, H, M, M]
    real = F.pad(mask, (0, G * M - L)).view(2, G, 1, M, 1)  # real queries
    expected = (probs * real).sum(dim=3).mean(dim=2).reshape(2, G * M)[:, :L]
    torch.testing.assert_close(out.received, expected, atol=1e-6, rtol=0)

    # Rows are distributions; real queries give padding keys nothing, so padding receives 0.
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, G, H, M, M)[..., 0])
    key_is_pad = ~F.pad(mask, (0, G * M - L)).view(2, G, 1, 1, M)
    assert (probs * real * key_is_pad).abs().max() == 0
    assert (out.received[~mask] == 0).all()
    # Each real query hands out one unit of attention per head.
    assert torch.allclose(out.received.sum(-1), torch.tensor(lengths, dtype=torch.float))


@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["soft", "peaked"])
def test_entropy_is_the_mean_over_heads_of_each_rows_entropy(scale):
    # -sum p log p by its definition, on the maps the module reports, with a window and
    # padding (p = 0 on masked keys); "peaked" rows have entropy near 0, where the fast
    # identity (log-sum-exp minus the expected score) loses the most precision.
    attn = build()
    with torch.no_grad():
        attn.qkv.weight.mul_(scale**0.5)
    L, lengths = 20, [20, 13]
    mask = padding_mask(lengths, L)
    out = attn(torch.randn(2, L, D), mask, need_stats=True, need_maps=True)
    G, M = out.n_groups, out.group_len
    probs = out.local_probs.double()  # [B, G, H, M, M]
    rows = -(probs * probs.clamp_min(1e-300).log()).sum(-1)  # [B, G, H, M]
    expected = rows.mean(dim=2).reshape(2, G * M)[:, :L].float()
    torch.testing.assert_close(out.entropy, expected, atol=2e-5, rtol=0)
    assert out.entropy.min() >= 0


def test_explicit_attention_is_the_same_in_one_chunk_or_many(monkeypatch):
    # The explicit path works a chunk of groups at a time; chunk boundaries must not show,
    # with padding (a per-group mask) and a window, for outputs, statistics and maps.
    attn = build()
    make_nonzero(attn)
    x, mask = torch.randn(3, 30, D), padding_mask([30, 17, 9], 30)
    whole = attn(x, mask, need_stats=True, need_maps=True)
    monkeypatch.setattr(attention, "CHUNK_SCORES", H * 8 * 8 * 3)  # 3 groups per chunk
    chunked = attn(x, mask, need_stats=True, need_maps=True)
    for name in ("hidden", "received", "entropy", "local_probs", "summary_probs"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), atol=1e-6,
                                   rtol=0)


def test_stats_and_maps_are_kept_only_when_asked():
    attn = build()
    x, mask = torch.randn(1, 16, D), torch.ones(1, 16, dtype=torch.bool)
    plain = attn(x, mask)
    assert plain.received is None and plain.entropy is None and plain.local_probs is None
    assert plain.summary_probs is None
    stats = attn(x, mask, need_stats=True)
    assert stats.received is not None and stats.local_probs is None
    maps = attn(x, mask, need_maps=True)
    assert maps.summary_probs.shape == (1, H, 2, 2)
    torch.testing.assert_close(maps.summary_probs.sum(-1), torch.ones(1, H, 2))
    torch.testing.assert_close(plain.hidden, maps.hidden, atol=1e-5, rtol=0)
