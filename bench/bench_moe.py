"""Issue 6, item 2: every MoE layer, like for like, against a dense FFN and against a peer.

T = 4096 tokens, D = 256, experts of the shallow MLP shape D -> F -> D (F = 768, GELU), 8
experts per tier, forward in eval mode without gradients, dropless (every assignment is
computed; `capacity_factor` is None by default and the peer drops nothing either).

- Dense reference (`DenseReference`): one D -> W -> D FFN of our expert MLP (GELU, biases)
  whose width W makes its FLOPs equal to the expert FLOPs the dispatcher executed per token
  (W = k F for top-k; mean K x F for DA-MoE; the deep/shallow mix for DASG). It runs on row
  chunks whose hidden activations stay under 16 MiB: a whole [T, W] hidden tensor (25-50 MiB
  here) is mapped fresh and page-faulted on every call, which slowed the dense reference by
  up to 40% and would flatter the experts (each works on its own smaller slice).
  MH-MoE's experts have another shape: they read sub-tokens of D/h features, and the layer
  also runs its split and merge projections. Its like-for-like reference is the same layer
  made dense: split, one D/h -> k F -> D/h FFN over every sub-token, merge; equal active
  FLOPs, the same expert MLP shape, no routing. Its ratio to the plain dense FFN of equal
  expert FLOPs is reported beside it.
- Peer: Hugging Face `transformers`' `MixtralSparseMoeBlock`, 8 experts, top-2. Mixtral's
  experts are SwiGLU (three matrices), ours GELU (two), so "the same expert MLP" means equal
  FLOPs: Mixtral's intermediate size is 2F/3 = 512, giving 6 * D * 512 = 4 * D * 768 FLOPs per
  token per expert. transformers offers several expert kernels: `eager` (the default of a
  standalone block: a loop over experts, as ours) and `grouped_mm` (the default inside a
  transformers model) are both timed and the faster is the peer figure; `batched_mm` is left
  out: it gathers a copy of the expert weights for every token (T x K x 3 x D x F' floats),
  which took tens of seconds per call here. DA-MoE gives each token K = ceil(k_max I)
  experts; with a uniform importance I that is 2.5 experts per token on average, a quarter
  more work than the peer's 2, so the peer comparison also runs it on importances drawn so
  that the mean K is 2 (`da_moe, mean K = 2`).

Shape legend: T tokens, D model dim, E experts, F expert hidden, K slots per token.
"""

from __future__ import annotations

import torch

from dasg_moe.config import DasgConfig
from dasg_moe.experts import ShallowExperts
from dasg_moe.moe import DAMoE, DASGMoE, MHMoE, MoEInput, MoEOutput, TopKMoE

from .common import Section, block_seconds, compare, top_ops

D, F_, FD, E = 256, 768, 256, 8
DA_MOE_K2 = "da_moe, mean K = 2"


def moe_config(**overrides) -> DasgConfig:
    base = dict(vocab_size=8, d_model=D, n_heads=4, n_shallow=E, n_deep=E, d_ff=F_,
                d_ff_deep=FD, top_k=2, k_max=4, mh_heads=2, dropout=0.0)
    return DasgConfig(**{**base, **overrides})


def make_input(T: int, seed: int = 0, max_importance: float = 1.0, **routing) -> MoEInput:
    """Random tokens; importance uniform on [0, max_importance) (DA-MoE's K = ceil(4 I) is
    uniform on 1..4 for 1.0, on 1..3, mean 2, for 0.75)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen)
    importance = torch.rand(T, generator=gen) * max_importance  # DA-MoE's K, the DASG score
    entropy = torch.rand(T, generator=gen) * 3.0
    return MoEInput(x, importance, entropy, routing.pop("theta_s", 0.3),
                    routing.pop("theta_d", 0.7), **routing)


def build_layers() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = moe_config()
    layers = {"switch": TopKMoE(cfg, k=1), "topk": TopKMoE(cfg, k=2), "da_moe": DAMoE(cfg),
              "mh_moe": MHMoE(cfg), "dasg": DASGMoE(cfg, layer=0)}
    layers[DA_MOE_K2] = layers["da_moe"]
    with torch.no_grad():  # the deep tier's layer 3 starts at zero; make it compute
        layers["dasg"].deep.w3.normal_(0.0, FD**-0.5)
    return {name: layer.eval() for name, layer in layers.items()}


def reference_output(layer: torch.nn.Module, inp: MoEInput, out: MoEOutput) -> torch.Tensor:
    """Independent of the dispatcher: every expert runs on every (sub-)token and the outputs
    are combined with the gates the layer reported. [T, D]."""
    x = inp.x
    T = x.shape[0]
    if isinstance(layer, MHMoE):
        x = layer.split(x).reshape(T * layer.h, D // layer.h)  # [T*S, D/S]
        forward, n_experts = layer.experts.expert_forward, layer.experts.n_experts
    elif isinstance(layer, DASGMoE):
        forward = layer.expert_forward
        n_experts = layer.shallow.n_experts + layer.deep.n_experts
    else:
        forward, n_experts = layer.experts.expert_forward, layer.experts.n_experts
    idx = out.expert_idx.reshape(x.shape[0], -1)  # [T*S, K]
    gate = out.gate.reshape(x.shape[0], -1)
    y = torch.zeros_like(x)
    for e in range(n_experts):
        weight = (gate * (idx == e)).sum(-1, keepdim=True)  # [T*S, 1]
        y = y + weight * forward(e, x)
    if isinstance(layer, MHMoE):
        y = layer.merge(y.reshape(T, D))
    return y


class DenseReference(torch.nn.Module):
    """The dense FFN of equal active FLOPs: d_in -> width -> d_in, on row chunks of at most
    HIDDEN_CHUNK hidden values. With `mh` (an MH-MoE layer), that layer's own split and merge
    run around it and the FFN reads the D/h-feature sub-tokens (MH-MoE made dense)."""

    HIDDEN_CHUNK = 1 << 22  # 16 MiB of fp32 hidden activations

    def __init__(self, width: int, mh: MHMoE | None = None) -> None:
        super().__init__()
        self.mh = mh
        self.ffn = ShallowExperts(1, D // mh.h if mh else D, width)

    def flops_per_token(self) -> int:
        return self.ffn.flops_per_token() * (self.mh.h if self.mh else 1)

    def forward(self, inp: MoEInput) -> torch.Tensor:
        T = inp.x.shape[0]
        rows = inp.x if self.mh is None else self.mh.split(inp.x).reshape(T * self.mh.h, -1)
        per_chunk = max(1, self.HIDDEN_CHUNK // self.ffn.w_in.shape[-1])
        out = torch.cat([self.ffn.expert_forward(0, part) for part in rows.split(per_chunk)])
        return out if self.mh is None else self.mh.merge(out.reshape(T, D))  # [T, D]


def dense_width(flops_per_token: float) -> int:
    """Width of a D -> W -> D FFN with these FLOPs per token (4 D W)."""
    return max(1, round(flops_per_token / (4 * D)))


def layer_gflop(name: str, layer: torch.nn.Module, out: MoEOutput, T: int) -> float:
    """Matmul FLOPs of the whole layer: experts + router gates (+ split/merge, evaluator)."""
    flops = float(out.flops.sum())
    if isinstance(layer, MHMoE):
        flops += 2 * 2 * T * D * D + 2 * T * layer.h * (D // layer.h) * E
    elif isinstance(layer, DASGMoE):
        hidden = layer.evaluator.complexity_net[0].out_features
        flops += 2 * T * D * 2 * E + 2 * T * (D + 1) * hidden
    elif isinstance(layer, TopKMoE):
        flops += 2 * T * D * E
    return flops / 1e9


def mixtral_blocks() -> dict[str, torch.nn.Module]:
    """The peer at equal FLOPs, one block per transformers expert kernel that runs here."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    blocks = {}
    for impl in ("eager", "grouped_mm"):
        config = MixtralConfig(hidden_size=D, intermediate_size=2 * F_ // 3,
                               num_local_experts=E, num_experts_per_tok=2, hidden_act="silu")
        config._experts_implementation = impl
        torch.manual_seed(0)
        block = MixtralSparseMoeBlock(config).eval()
        with torch.no_grad():
            for p in block.parameters():  # the block's own init leaves torch.empty weights
                p.normal_(0.0, p.shape[-1] ** -0.5)
        blocks[impl] = block
    return blocks


def run(quick: bool, threads: int) -> Section:
    T = 256 if quick else 4096
    sec = Section("moe", f"2. MoE layers like for like (T={T}, D={D}, F={F_}, {E} experts per "
                         "tier, forward, eval, fp32)")
    layers = build_layers()
    inputs = {name: make_input(T) for name in layers}
    inputs["dasg"] = make_input(T, force_tier="shallow")  # all tokens in one tier
    inputs[DA_MOE_K2] = make_input(T, max_importance=0.75)
    fns, outs = {}, {}
    with torch.no_grad():
        for name, layer in layers.items():
            out = layer(inputs[name])
            outs[name] = out
            sec.check(f"{name}: dispatch == every-expert reference", out.out,
                      reference_output(layer, inputs[name], out), 1e-4, 1e-4)
            executed = float((out.tokens_per_expert.float() * _flops_per_expert(layer)).sum())
            sec.check_true(f"{name}: recorded FLOPs == FLOPs the dispatcher executed",
                           abs(float(out.flops.sum()) - executed) <= 1e-6 * executed,
                           f"{float(out.flops.sum()):.4g} vs {executed:.4g}")

    def call(module, inp):
        def fn():
            with torch.no_grad():
                return module(inp)
        return fn

    widths, references = {}, {}
    reference_flops = {}  # reference name -> FFN FLOPs of one call
    for name, out in outs.items():
        width = dense_width(float(out.flops.mean()))
        widths[name] = width
        references[name] = f"dense FFN W={width}"
        if references[name] not in fns:
            dense = DenseReference(width).eval()
            fns[references[name]] = call(dense, inputs["topk"])
            reference_flops[references[name]] = float(dense.flops_per_token() * T)
        fns[name] = call(layers[name], inputs[name])
    mh = layers["mh_moe"]
    mh_width = mh.k * mh.experts.w_in.shape[-1]
    references["mh_moe"] = f"dense MH FFN W={mh_width} (D/h={D // mh.h})"
    dense_mh = DenseReference(mh_width, mh).eval()
    fns[references["mh_moe"]] = call(dense_mh, inputs["mh_moe"])
    mh_flops = float(dense_mh.flops_per_token() * T)  # the FFN; split and merge are the same
    reference_flops[references["mh_moe"]] = mh_flops
    executed = float(outs["mh_moe"].flops.sum())
    sec.check_true("dense MH FFN: FFN FLOPs == MH-MoE's executed expert FLOPs",
                   abs(mh_flops - executed) <= 1e-6 * executed, f"{mh_flops:.4g} vs {executed:.4g}")
    with torch.no_grad():
        dense_ref = DenseReference(2 * F_).eval()  # two chunks at T = 4096
        sec.check("dense reference in row chunks == one D -> W -> D FFN",
                  dense_ref(inputs["topk"]), dense_ref.ffn.expert_forward(0, inputs["topk"].x))

    peers = mixtral_blocks()
    x3 = inputs["topk"].x.unsqueeze(0)  # [1, T, D]
    with torch.no_grad():
        peer_ref = peers["eager"](x3)
        for impl, block in peers.items():
            block.load_state_dict(peers["eager"].state_dict())
            sec.check(f"Mixtral {impl} == Mixtral eager (same weights)", block(x3), peer_ref,
                      1e-4, 1e-4)
    for impl, block in peers.items():
        def peer(block=block):
            with torch.no_grad():
                return block(x3)
        fns[f"Mixtral {impl}"] = peer

    times = compare(fns, rounds=2 if quick else 5, threads=threads,
                    block_s=block_seconds(quick, 0.3))
    mixtral = {k: v.median_s for k, v in times.items() if k.startswith("Mixtral")}
    best_peer = min(mixtral, key=mixtral.get)
    for name, t in times.items():
        row = {"layer": name, **t.as_ms()}
        if name in outs:
            row.update(expert_gflop=round(float(outs[name].flops.sum()) / 1e9, 3),
                       layer_gflop=round(layer_gflop(name, layers[name], outs[name], T), 3),
                       equal_flop_dense=references[name],
                       vs_dense=round(t.median_s / times[references[name]].median_s, 3),
                       vs_mixtral_best=round(t.median_s / mixtral[best_peer], 3))
        elif name.startswith("Mixtral"):
            row.update(expert_gflop=round(6 * D * (2 * F_ // 3) * 2 * T / 1e9, 3))
        else:
            row.update(expert_gflop=round(reference_flops[name] / 1e9, 3))
        sec.rows.append(row)
    for name in outs:
        ratio = times[name].median_s / times[references[name]].median_s
        note = ""
        if name == "mh_moe":
            plain = times[name].median_s / times[f"dense FFN W={widths[name]}"].median_s
            note = (f"reference: {references[name]}; vs a plain D -> {widths[name]} -> D FFN "
                    f"of equal expert FLOPs (no split / merge): {plain:.2f}x")
        sec.target(f"{name} vs dense FFN of equal active FLOPs", ratio, 1.3, "lower", "x",
                   note=note)
    for name in outs:
        ratio = times[name].median_s / mixtral[best_peer]
        note = f"fastest peer kernel: {best_peer}"
        mean_k = float((outs[name].expert_idx >= 0).sum(-1).float().mean())
        if name == "switch":
            note += "; top-1, half the peer's expert FLOPs"
        elif name == "mh_moe":
            note += (f"; split + merge add {4 * D * D * T / 1e9:.2f} GFLOP to the peer's "
                     "expert FLOPs")
        elif name.startswith("da_moe"):
            note += f"; mean K = {mean_k:.2f}"
        threshold = 1.0
        if name == "da_moe":  # a quarter more work than the top-2 peer: like for like below
            threshold = float("inf")
            note = f"reported: mean K = {mean_k:.2f} experts per token against the peer's 2; " \
                   f"the mean-K-2 row is the like-for-like comparison ({best_peer})"
        sec.target(f"{name} vs Mixtral MoE block (transformers)", ratio, threshold, "lower", "x",
                   note=note)
    sec.profiles["topk layer"] = top_ops(fns["topk"], n=10, quick=quick)
    sec.profiles["dasg layer (shallow tier)"] = top_ops(fns["dasg"], n=10, quick=quick)
    sec.profiles[best_peer] = top_ops(fns[best_peer], n=8, quick=quick)
    sec.notes.append(
        f"Dense FFN widths chosen for equal active FLOPs: {widths}. DASG runs with every token "
        "forced into the shallow tier (RoutingOverrides(force_tier='shallow')); it still runs "
        "its evaluator, both tier routers and the policy. da_moe's K comes from a uniform "
        "random importance (K = ceil(4 I), uniform on 1..4); the mean-K-2 row draws the "
        "importance uniform on [0, 0.75) (K uniform on 1..3).")
    return sec


def _flops_per_expert(layer: torch.nn.Module) -> torch.Tensor:
    if isinstance(layer, DASGMoE):
        return torch.tensor([float(layer.shallow.flops_per_token())] * layer.shallow.n_experts
                            + [float(layer.deep.flops_per_token())] * layer.deep.n_experts)
    return torch.full((layer.experts.n_experts,), float(layer.experts.flops_per_token()))
