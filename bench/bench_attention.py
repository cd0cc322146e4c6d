"""Issue 6, item 1: grouped attention (GMHA, DESIGN.md §2.1) against dense attention.

- The core: `grouped_attention_core` (groups as a batch dimension, one SDPA call) against
  `F.scaled_dot_product_attention` over the whole sequence, on the same Q/K/V, G=16 groups,
  H=4 heads, Dh=64, N=2048 and 8192 tokens, batch 1. Both read zero-copy views of one
  projection output laid out as the layer lays it out ([N, 3, H, Dh]), so neither pays a
  copy the other does not. The FLOP limit of the speed-up is G (both cores do 4*N*M*D vs
  4*N*N*D multiply-add FLOPs, M = N/G).
- The core with the statistics the evaluator needs (importance = attention received, and
  the entropy of each token's row): `grouped_attention_core(..., need_stats=True)`, explicit
  probabilities in the grouped layout, a chunk of groups at a time, against the same dense
  SDPA (which computes no statistics).
- The whole GMHA layer (qkv, grouped core, per-group refinement MLPs, group-summary path,
  output projection) against an MHA layer of the same width (the same module class with
  `attention="mha"`), with the analytic FLOP ratio.
- Peak memory at the largest N (see `common.peak_memory_bytes` for the method).
- On a GPU: the grouped core with a sliding-window band against FlexAttention with the same
  block mask (compiled). Not measured without a GPU.

Shape legend: N tokens, G groups, M = N / G tokens per group, H heads, Dh head dim,
D = H * Dh model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dasg_moe.attention import (
    GroupedMultiHeadAttention,
    grouped_attention_core,
    window_mask,
)
from dasg_moe.config import DasgConfig

from .common import Section, block_seconds, compare, peak_memory_bytes, top_ops

G, H, DH = 16, 4, 64
D = H * DH
R = 32  # refinement MLP width (DasgConfig.group_mlp_dim default)


# ------------------------------------------------------------------------------------------
# inputs and references
# ------------------------------------------------------------------------------------------

def make_qkv(N: int, seed: int = 0):
    """One projection output [N, 3, H, Dh] and its dense and grouped views (no copies)."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(N, 3, H, DH, generator=gen)  # [N, 3, H, Dh]
    dense = qkv.unsqueeze(0).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [1, H, N, Dh]
    M = N // G
    grouped = qkv.view(G, M, 3, H, DH).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [G, H, M, Dh]
    return dense, grouped


def reference_groups(q, k, v):
    """Independent reference: a Python loop over groups, explicit softmax in float64,
    statistics by their definitions. q, k, v: [G, H, M, Dh] -> out, received, entropy."""
    outs, received, entropy = [], [], []
    for g in range(q.shape[0]):
        qg, kg, vg = (t[g].double() for t in (q, k, v))  # [H, M, Dh]
        probs = (qg @ kg.transpose(-2, -1) / math.sqrt(DH)).softmax(-1)  # [H, M, M]
        outs.append(probs @ vg)
        received.append(probs.sum(dim=-2).mean(dim=0))  # column sums, mean over heads
        entropy.append(-(probs * probs.clamp_min(1e-300).log()).sum(-1).mean(0))
    return torch.stack(outs), torch.stack(received), torch.stack(entropy)


def grouped_stats(q, k, v):
    """The fast path the evaluator uses: probabilities in the grouped layout + statistics."""
    real = ALL_REAL[q.shape[0], q.shape[2]]
    core = grouped_attention_core(q, k, v, real, None, need_stats=True)
    return core.out, core.received, core.entropy


class _AllReal(dict):
    """key masks of all-real tokens, built once per shape (not part of any timed call)."""

    def __missing__(self, shape):
        self[shape] = torch.ones(*shape, dtype=torch.bool)
        return self[shape]


ALL_REAL = _AllReal()


def dense_stats(q, k, v):
    """Dense attention that also yields the statistics: the [H, N, N] probabilities must be
    materialised (what the evaluator would cost without groups)."""
    real = ALL_REAL[1, q.shape[2]]
    core = grouped_attention_core(q, k, v, real, None, need_stats=True)
    return core.out, core.received, core.entropy


# ------------------------------------------------------------------------------------------
# the layer
# ------------------------------------------------------------------------------------------

def layer_config(N: int, attention: str) -> DasgConfig:
    """A layer of width D over N tokens; the window covers the group (the core above)."""
    return DasgConfig(vocab_size=8, max_len=N, d_model=D, n_heads=H, n_groups=G, window=2 * N,
                      attention=attention, group_mlp_dim=R, dropout=0.0)


def layer_flops(N: int, attention: str) -> float:
    """Analytic FLOPs (2 per multiply-add) of one layer forward on N real tokens, batch 1."""
    proj = 2 * N * D * 3 * D + 2 * N * D * D  # qkv and output projection
    if attention == "mha":
        return proj + 4 * N * N * D  # QK^T and PV over all heads
    M = N // G
    core = 4 * N * M * D
    refine = 2 * N * D * R * 2
    summaries = 2 * G * D * 3 * D + 4 * G * G * D + 2 * G * D * D * 2  # qkv, attn, out, fuse
    return proj + core + refine + summaries


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------

def run(quick: bool, threads: int) -> Section:
    sec = Section("attention", "1. GMHA core and layer vs dense attention "
                               f"(G={G}, H={H}, Dh={DH}, batch 1, fp32)")
    sizes = [256] if quick else [2048, 8192]
    for N in sizes:
        _core(sec, N, quick, threads)
    for N in sizes:
        _layer(sec, N, quick, threads)
    _memory(sec, sizes[-1])
    _flex(sec, sizes[-1], quick)
    sec.notes.append(
        "Dense attention is `F.scaled_dot_product_attention` on [1, H, N, Dh]; on this CPU it "
        "runs PyTorch's fused flash-style kernel, which never materialises the N x N scores. "
        "`dense + stats` has to materialise them (softmax probabilities) to give attention "
        "received: it is shown for scale, the targets compare against plain dense SDPA.")
    return sec


def _core(sec: Section, N: int, quick: bool, threads: int) -> None:
    M = N // G
    (dq, dk, dv), (gq, gk, gv) = make_qkv(N)
    key_mask = ALL_REAL[G, M]
    band = window_mask(M, M // 2, gq.device)  # |i - j| <= M / 4: a sliding window in a group

    # Reference checks on the same inputs, before any timing.
    ref_out, ref_rec, ref_ent = reference_groups(gq, gk, gv)
    fast = grouped_attention_core(gq, gk, gv, key_mask, None).out
    sec.check(f"N={N}: grouped core (SDPA, no mask) == per-group loop", fast, ref_out, 1e-4, 1e-4)
    out, rec, ent = grouped_stats(gq, gk, gv)
    sec.check(f"N={N}: grouped core with stats: output", out, ref_out, 1e-4, 1e-4)
    sec.check(f"N={N}: grouped core with stats: received", rec, ref_rec, 1e-4, 1e-4)
    sec.check(f"N={N}: grouped core with stats: entropy", ent, ref_ent, 1e-4, 1e-4)
    banded = grouped_attention_core(gq, gk, gv, key_mask, band).out
    banded_ref = grouped_attention_core(gq, gk, gv, key_mask, band, need_maps=True).out
    sec.check(f"N={N}: grouped core with window band: SDPA == explicit", banded, banded_ref,
              1e-4, 1e-4)
    if N <= 2048:  # dense reference with a block-diagonal mask: the grouping itself is right
        blocks = torch.block_diag(*[torch.ones(M, M, dtype=torch.bool)] * G)  # [N, N]
        dense_blocked = F.scaled_dot_product_attention(dq, dk, dv, attn_mask=blocks)
        sec.check(f"N={N}: grouped core == dense SDPA with block-diagonal mask",
                  fast.transpose(0, 1).reshape(1, H, N, DH), dense_blocked, 1e-4, 1e-4)

    fns = {
        "dense SDPA": lambda: F.scaled_dot_product_attention(dq, dk, dv),
        "grouped core": lambda: grouped_attention_core(gq, gk, gv, key_mask, None).out,
        "grouped core + stats": lambda: grouped_stats(gq, gk, gv),
        f"grouped core, window {M // 2}": lambda: grouped_attention_core(gq, gk, gv, key_mask,
                                                                         band).out,
    }
    if N <= 2048:
        fns["dense + stats"] = lambda: dense_stats(dq, dk, dv)
    rounds = 2 if quick else (3 if N > 4096 else 7)
    times = compare(fns, rounds=rounds, threads=threads,
                    block_s=block_seconds(quick, 0.3))
    base = times["dense SDPA"].median_s
    dense_flops = 4 * N * N * D
    for name, t in times.items():
        flops = dense_flops if name.startswith("dense") else 4 * N * M * D
        sec.rows.append({"table": "core", "N": N, "path": name, **t.as_ms(),
                         "speedup_vs_dense_sdpa": round(base / t.median_s, 2),
                         "flop_ratio_limit": round(dense_flops / flops, 1),
                         "gflop_per_s": round(flops / t.median_s / 1e9, 1)})
    core_x = base / times["grouped core"].median_s
    stats_x = base / times["grouped core + stats"].median_s
    if N == 2048 or quick:
        sec.target(f"core vs dense SDPA, N={N}", core_x, 10.0, "higher", "x")
    if N == 8192 or quick:
        sec.target(f"core vs dense SDPA, N={N}", core_x, 12.0, "higher", "x")
        sec.target(f"core + stats vs dense SDPA, N={N}", stats_x, 6.0, "higher", "x")
    sec.profiles[f"grouped core + stats, N={N}"] = top_ops(
        lambda: grouped_stats(gq, gk, gv), calls=1 if N > 4096 else 3, quick=quick)
    sec.profiles[f"grouped core, N={N}"] = top_ops(
        lambda: grouped_attention_core(gq, gk, gv, key_mask, None).out,
        calls=1 if N > 4096 else 3, quick=quick)


def _layer(sec: Section, N: int, quick: bool, threads: int) -> None:
    torch.manual_seed(0)
    gmha = GroupedMultiHeadAttention(layer_config(N, "gmha")).eval()
    mha = GroupedMultiHeadAttention(layer_config(N, "mha")).eval()
    mha.load_state_dict({k: v for k, v in gmha.state_dict().items() if k.startswith(
        ("qkv", "out_proj"))})
    with torch.no_grad():  # the zero-initialised paths compute all the same; make them act
        gmha.refine_out.normal_(0.0, 0.05)
        gmha.fuse.weight.normal_(0.0, 0.05)
    x = torch.randn(1, N, D)
    mask = torch.ones(1, N, dtype=torch.bool)

    with torch.no_grad():
        fast = gmha(x, mask).hidden
        explicit = gmha(x, mask, need_stats=True).hidden  # explicit-softmax path
        sec.check(f"N={N}: GMHA layer, SDPA path == explicit-softmax path", fast, explicit,
                  1e-4, 1e-4)
        if N <= 2048:
            sec.check(f"N={N}: MHA layer, SDPA path == explicit-softmax path", mha(x, mask).hidden,
                      mha(x, mask, need_stats=True).hidden, 1e-4, 1e-4)

    def layer(module, stats=False):
        def call():
            with torch.no_grad():
                return module(x, mask, need_stats=stats)
        return call

    rounds = 2 if quick else (3 if N > 4096 else 7)
    times = compare({"MHA layer": layer(mha), "GMHA layer": layer(gmha),
                     "GMHA layer + stats": layer(gmha, True)},
                    rounds=rounds, threads=threads,
                    block_s=block_seconds(quick, 0.3))
    flop_ratio = layer_flops(N, "mha") / layer_flops(N, "gmha")
    base = times["MHA layer"].median_s
    for name, t in times.items():
        flops = layer_flops(N, "mha" if name.startswith("MHA") else "gmha")
        sec.rows.append({"table": "layer", "N": N, "path": name, **t.as_ms(),
                         "speedup_vs_mha": round(base / t.median_s, 2),
                         "analytic_flop_ratio": round(layer_flops(N, "mha") / flops, 2),
                         "gflop_per_s": round(flops / t.median_s / 1e9, 1)})
    measured = base / times["GMHA layer"].median_s
    sec.target(f"GMHA layer vs MHA layer, N={N}: speed-up / analytic FLOP ratio "
               f"({flop_ratio:.2f})", measured / flop_ratio, 0.7, "higher", "x of FLOP ratio",
               note=f"measured speed-up {measured:.2f}x")
    sec.profiles[f"GMHA layer, N={N}"] = top_ops(layer(gmha), calls=1 if N > 4096 else 3,
                                                 quick=quick)


def _memory(sec: Section, N: int) -> None:
    (dq, dk, dv), (gq, gk, gv) = make_qkv(N)
    key_mask = ALL_REAL[G, N // G]
    peaks = {
        "dense SDPA": peak_memory_bytes(lambda: F.scaled_dot_product_attention(dq, dk, dv)),
        "grouped core": peak_memory_bytes(
            lambda: grouped_attention_core(gq, gk, gv, key_mask, None).out),
        "grouped core + stats": peak_memory_bytes(lambda: grouped_stats(gq, gk, gv)),
        "dense + stats": peak_memory_bytes(lambda: dense_stats(dq, dk, dv)),
    }
    for name, peak in peaks.items():
        sec.rows.append({"table": "memory", "N": N, "path": name,
                         "peak_mib": round(peak / 2**20, 2),
                         "vs_dense_sdpa": round(peak / max(peaks["dense SDPA"], 1), 3),
                         "vs_dense_stats": round(peak / max(peaks["dense + stats"], 1), 4)})
    sec.target(f"peak memory, grouped core + stats / dense + stats, N={N}",
               peaks["grouped core + stats"] / peaks["dense + stats"], 1 / 8, "lower", "x",
               note="the like-for-like pair where scores are materialised")
    sec.target(f"peak memory, grouped core / dense SDPA, N={N}",
               peaks["grouped core"] / peaks["dense SDPA"], 1 / 8, "lower", "x",
               note="both fused kernels keep O(N) memory (output + per-thread tiles), so "
                    "there is no N x N term for grouping to remove")


def _flex(sec: Section, N: int, quick: bool) -> None:
    """Grouped core with a window band vs FlexAttention with the same block mask (GPU)."""
    name = f"FlexAttention sliding-window block mask vs grouped core, N={N}"
    if not torch.cuda.is_available():
        sec.rows.append({"table": "flex", "N": N, "path": "FlexAttention (GPU)",
                         "note": "not measured: no GPU"})
        sec.target(name, None, 1.0, "higher", "x", note="not measured: no GPU")
        return
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    M, half = N // G, N // G // 4
    (dq, dk, dv), (gq, gk, gv) = (tuple(t.cuda() for t in part) for part in make_qkv(N))

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx // M == kv_idx // M) & ((q_idx - kv_idx).abs() <= half)

    block_mask = create_block_mask(mask_mod, 1, 1, N, N, device="cuda")
    flex = torch.compile(flex_attention)
    band = window_mask(M, 2 * half, gq.device)
    key_mask = torch.ones(G, M, dtype=torch.bool, device="cuda")
    ours = grouped_attention_core(gq, gk, gv, key_mask, band).out
    theirs = flex(dq, dk, dv, block_mask=block_mask)
    sec.check(f"N={N}: grouped core with band == FlexAttention",
              ours.transpose(0, 1).reshape(1, H, N, DH), theirs, 1e-3, 1e-3)
    times = compare({"FlexAttention": lambda: flex(dq, dk, dv, block_mask=block_mask),
                     "grouped core, band": lambda: grouped_attention_core(gq, gk, gv, key_mask,
                                                                          band).out},
                    rounds=2 if quick else 7, threads=torch.get_num_threads())
    for path, t in times.items():
        sec.rows.append({"table": "flex", "N": N, "path": path, **t.as_ms()})
    sec.target(name, times["FlexAttention"].median_s / times["grouped core, band"].median_s,
               1.0, "higher", "x", note="GPU figure")
