"""Grouped Multi-Head Attention, GMHA (DESIGN.md §2.1; paper §4.2).

The sequence is cut into contiguous groups of M tokens; inside a group, multi-head attention
runs under a sliding-window mask (|i - j| <= window // 2) and the padding mask. Groups are a
batch dimension, so all of them go through one attention call. Each group's output is refined
by its own small MLP (one weight set per group index), the groups are put back in sequence
order and projected. A long-range path summarises each group (masked mean), lets the G
summaries attend to each other and fuses the result back into every token of the group.

Full multi-head attention (`attention="mha"`) is the same module with one group, no window,
no aggregation and no refinement, so both kinds share one code path.

Shape legend: B batch, L tokens, D model dim, H heads, Dh head dim, G groups, M tokens per
group, N = B*G groups in the batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DasgConfig


def group_count(seq_len: int, group_len: int) -> tuple[int, int]:
    """Groups and tokens per group for a (padded) sequence of `seq_len` tokens.

    Paper silent on short inputs; we keep the group length fixed at M = ceil(max_len / G) and
    use ceil(L / M) groups, so a short input simply has fewer groups and a token's group
    depends only on its position, never on how much padding its batch carries. An input
    shorter than one group is a single group of exactly L tokens (no padding added).
    """
    if seq_len <= group_len:
        return 1, seq_len
    return -(-seq_len // group_len), group_len


def window_mask(group_len: int, window: int | None, device: torch.device) -> Tensor | None:
    """[M, M] bool, True where query i may attend key j (|i - j| <= window // 2).

    None when the window covers the whole group, which lets attention skip the mask.
    """
    if window is None or window // 2 >= group_len - 1:
        return None
    pos = torch.arange(group_len, device=device)
    return (pos[:, None] - pos[None, :]).abs() <= window // 2


@dataclass(frozen=True)
class AttentionOutput:
    """What one attention layer hands to the rest of the block.

    `received` and `entropy` are the evaluator's attention statistics (None unless asked);
    `local_probs` / `summary_probs` are kept only for a trace.
    """

    hidden: Tensor  # [B, L, D]
    received: Tensor | None = None  # [B, L] attention each token receives, mean over heads
    entropy: Tensor | None = None  # [B, L] entropy of each token's own attention row
    local_probs: Tensor | None = None  # [B, G, H, M, M] attention inside each group
    summary_probs: Tensor | None = None  # [B, H, G, G] group-summary attention
    group_len: int = 0  # M actually used for this input
    n_groups: int = 0  # G actually used for this input


@dataclass(frozen=True)
class CoreOutput:
    """What `grouped_attention_core` computed for every group."""

    out: Tensor  # [N, H, M, Dh]
    received: Tensor | None = None  # [N, M] attention received from real queries, head mean
    entropy: Tensor | None = None  # [N, M] entropy of each token's attention row, head mean
    probs: Tensor | None = None  # [N, H, M, M] the attention maps


# Attention scores materialised at once on the explicit path: 2**20 fp32 values = 4 MiB.
# Chunks this small are served again and again from the allocator's heap; whole-batch
# tensors of tens of MiB are mapped fresh and page-faulted on every call, which at N=8192
# cost as much as the arithmetic (G=16, H=4, M=512 on 2 CPU cores: 120 ms -> 65-80 ms).
CHUNK_SCORES = 1 << 20


def grouped_attention_core(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor,
                           window: Tensor | None, need_stats: bool = False,
                           need_maps: bool = False) -> CoreOutput:
    """Attention of every group at once (DESIGN.md §2.1: groups are a batch dimension).

    q, k, v: [N, H, M, Dh]; key_mask: [N, M] bool (real tokens); window: [M, M] bool or None.
    Every query may attend itself, so a padding query never sees an all-masked row (its
    output is discarded later); a real query sees itself anyway.

    A mask is built only when it changes the result (issue 6, measured in bench/): with no
    padding and no window SDPA gets attn_mask=None and runs its fused kernel on the bare
    [N, H, M, Dh] tensors; with a window but no padding it gets the [M, M] band alone,
    broadcast over groups and heads (the band holds the diagonal); only a padded input gets
    the full [N, 1, M, M] mask. `key_mask.all()` is one small reduction (a host sync on a
    GPU), far cheaper than the mask it saves.

    The statistics and maps need the probabilities, which the fused kernel never forms: then
    the groups go through an explicit softmax, a chunk of groups at a time (CHUNK_SCORES).
    """
    M = q.shape[-2]
    allowed = None
    if not bool(key_mask.all()):
        allowed = key_mask[:, None, None, :]  # [N, 1, 1, M]
        if window is not None:
            allowed = allowed & window  # [N, 1, M, M]
        allowed = allowed | torch.eye(M, dtype=torch.bool, device=q.device)  # [N, 1, M, M]
    elif window is not None:
        allowed = window  # [M, M]
    if not (need_stats or need_maps):
        return CoreOutput(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    N, H = q.shape[:2]
    step = max(1, CHUNK_SCORES // (H * M * M))  # groups per chunk
    parts = []
    for n in range(0, N, step):
        rows = slice(n, n + step)
        mask = allowed[rows] if allowed is not None and allowed.dim() == 4 else allowed
        parts.append(_explicit_attention(q[rows], k[rows], v[rows], mask, key_mask[rows],
                                         need_stats, need_maps))
    if len(parts) == 1:
        return parts[0]
    return CoreOutput(**{field.name: None if getattr(parts[0], field.name) is None
                         else torch.cat([getattr(part, field.name) for part in parts])
                         for field in dataclasses.fields(CoreOutput)})


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None,
                        query_mask: Tensor, need_stats: bool, need_maps: bool) -> CoreOutput:
    """Softmax attention with its probabilities, for a chunk of n groups, and from them the
    evaluator's statistics (DESIGN.md §2.3) when asked.

    q, k, v: [n, H, M, Dh]; allowed: [n, 1, M, M] or [M, M] bool or None; query_mask: [n, M]
    bool, True on real queries (rows of padding queries count for nothing).
    - received [n, M]: column sums of the probabilities over the real queries, mean over
      heads: one batched vector-matrix product, mask weights [n, 1, H*M] times probs
      [n, H*M, M], so no masked copy of probs and no strided reduction over queries;
    - entropy [n, M]: -sum_j p_ij log p_ij of each token's own row, mean over heads, without
      a log over [M, M]: with p_ij = exp(s_ij - lse_i) it is lse_i - sum_j p_ij s_ij (masked
      keys have p_ij = 0 exactly), where sum_j p_ij s_ij = q_i . (sum_j p_ij k_j) for the
      scaled query, one batched matmul like `probs @ v`, and lse_i = max_j s_ij -
      log max_j p_ij (the largest score has the largest probability, at least 1/M, so its log
      is exact). About 4x faster than an elementwise -p log p (`torch.special.entr`), to
      1e-5. No gradient flows back into attention through the entropy (a routing feature).
    """
    n, H, M, Dh = q.shape
    q = q * Dh**-0.5  # scaling q costs M*Dh, not M*M
    scores = q @ k.transpose(-2, -1)  # [n, H, M, M]
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)  # [n, H, M, M]
    received = entropy = None
    if need_stats:
        weights = query_mask.to(probs.dtype).repeat(1, H).unsqueeze(1)  # [n, 1, H*M]
        received = (weights @ probs.reshape(n, H * M, M)).squeeze(1) / H  # [n, M]
        with torch.no_grad():
            lse = scores.amax(dim=-1) - probs.amax(dim=-1).log()  # [n, H, M]
            expected_score = (q * (probs @ k)).sum(dim=-1)  # [n, H, M]
            entropy = (lse - expected_score).clamp_min(0.0).mean(dim=1)  # [n, M]
    return CoreOutput(probs @ v, received, entropy, probs if need_maps else None)


class GroupedMultiHeadAttention(nn.Module):
    """GMHA, or plain MHA when configured with `attention="mha"`."""

    def __init__(self, cfg: DasgConfig) -> None:
        super().__init__()
        D, H = cfg.d_model, cfg.n_heads
        grouped = cfg.attention == "gmha"
        self.n_heads = H
        self.group_len = cfg.group_len if grouped else cfg.max_len
        self.window = cfg.window if grouped else None
        self.max_groups = -(-cfg.max_len // self.group_len)
        self.qkv = nn.Linear(D, 3 * D)
        self.out_proj = nn.Linear(D, D)
        self.refine = grouped and cfg.refine_groups
        if self.refine:
            # One bottleneck MLP per group index; the output weight starts at zero so each
            # refinement starts as the identity (paper: "independent MLPs per group").
            R = cfg.group_mlp_dim
            self.refine_in = nn.Parameter(torch.randn(self.max_groups, D, R) * D**-0.5)
            self.refine_out = nn.Parameter(torch.zeros(self.max_groups, R, D))
        self.aggregate = grouped and cfg.aggregate_groups
        if self.aggregate:
            # The summaries attend through this layer's own qkv / out_proj weights (paper
            # silent; sharing them keeps the long-range path cheap in parameters). Only the
            # fuse projection is new, zero-initialised so the block starts out purely local
            # (DESIGN.md §2.1).
            self.fuse = nn.Linear(D, D)
            nn.init.zeros_(self.fuse.weight)
            nn.init.zeros_(self.fuse.bias)

    def forward(self, x: Tensor, mask: Tensor, need_stats: bool = False,
                need_maps: bool = False) -> AttentionOutput:
        """x: [B, L, D]; mask: [B, L] bool, True on real tokens."""
        B, L, D = x.shape
        H = self.n_heads
        G, M = group_count(L, self.group_len)
        pad = G * M - L
        x_pad = F.pad(x, (0, 0, 0, pad))  # [B, G*M, D]
        mask_pad = F.pad(mask, (0, pad), value=False)  # [B, G*M]
        qkv = self.qkv(x_pad).view(B * G, M, 3, H, D // H)  # [N, M, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [N, H, M, Dh]
        key_mask = mask_pad.view(B * G, M)  # [N, M]
        core = grouped_attention_core(q, k, v, key_mask, window_mask(M, self.window, x.device),
                                      need_stats, need_maps)
        out = core.out.transpose(1, 2).reshape(B, G, M, D)  # [B, G, M, D]
        if self.refine:
            hidden = F.gelu(torch.einsum("bgmd,gdr->bgmr", out, self.refine_in[:G]))
            out = out + torch.einsum("bgmr,grd->bgmd", hidden, self.refine_out[:G])
        out = self.out_proj(out.reshape(B, G * M, D))  # [B, G*M, D]

        summary_probs = None
        if self.aggregate:
            fused, summary_probs = self._aggregate(x_pad.view(B, G, M, D),
                                                   mask_pad.view(B, G, M), need_maps)
            out = out + fused.repeat_interleave(M, dim=1)  # [B, G*M, D]
        out = out[:, :L]

        received = entropy = None
        if need_stats:
            received = core.received.view(B, G * M)[:, :L]  # [B, L]
            entropy = core.entropy.view(B, G * M)[:, :L]  # [B, L]
        local_probs = core.probs.view(B, G, H, M, M) if need_maps else None
        return AttentionOutput(out, received, entropy, local_probs, summary_probs, M, G)

    def _aggregate(self, x: Tensor, mask: Tensor, need_maps: bool) -> tuple[Tensor, Tensor | None]:
        """Long-range path. x: [B, G, M, D]; mask: [B, G, M]. Returns [B, G, D] to add to
        every token of each group, and the summary attention [B, H, G, G] if asked."""
        B, G, M, D = x.shape
        H = self.n_heads
        weight = mask.unsqueeze(-1).to(x.dtype)  # [B, G, M, 1]
        count = weight.sum(dim=2)  # [B, G, 1]
        summary = (x * weight).sum(dim=2) / count.clamp_min(1.0)  # [B, G, D], masked mean
        group_real = count.squeeze(-1) > 0  # [B, G]
        qkv = self.qkv(summary).view(B, G, 3, H, D // H)  # [B, G, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x [B, H, G, Dh]
        core = grouped_attention_core(q, k, v, group_real, None, need_maps=need_maps)
        mixed = core.out.transpose(1, 2).reshape(B, G, D)  # [B, G, D]
        fused = self.fuse(self.out_proj(mixed))  # [B, G, D]
        return fused, core.probs
