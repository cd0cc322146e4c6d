"""Issue 6, item 5: what tracing costs (DESIGN.md §3: "tracing off costs nothing").

Three forwards of the same small model on the same inputs, side by side:

- "no tracing code": the forward written out again below without any of the trace plumbing
  (no `trace` flag, no `need_maps`, no `RoutingOverrides`, no `_build_trace` branch): the
  embeddings, the blocks called directly, the heads, the auxiliary losses and per-example
  stats the model always returns. Compiling the trace branches out of the real forward is not
  possible in Python, so this hand-written minimal forward is the "no tracing code" baseline;
  it is checked to give the same logits.
- "trace off": `model(...)`.
- "trace on": `model(..., trace=True)`, which keeps the attention probabilities and copies
  every routing tensor to the CPU as [B, L, ...] records.

Both the Inspect case (one sentence, 64 tokens) and an evaluation batch (B=32, L=128).
For DASG the attention statistics are computed with tracing off too (the router needs them),
so "off" and "no tracing code" do the same arithmetic; their difference is the plumbing.
"""

from __future__ import annotations

import torch

from dasg_moe.model import DasgMoEModel
from dasg_moe.moe import MoEInput

from .common import Section, block_seconds, compare, paired_ratio, top_ops
from .models import random_batch, small_model


def minimal_forward(model: DasgMoEModel, ids, mask, types):
    """The classification forward without any tracing code (see module docstring)."""
    cfg = model.config
    empty = torch.empty(0)
    routing = MoEInput(empty, empty, empty, cfg.theta_s, cfg.theta_d)
    real = mask.bool()
    special = torch.isin(ids, torch.tensor(cfg.special_token_ids)) & real
    need_stats = cfg.router in ("dasg", "random", "da_moe")
    x = model.embeddings(ids, types)
    layers = []
    for block in model.blocks:
        x, attn, moe = block(x, real, special, need_stats, False, routing)
        layers.append((attn, moe))
    pooled = torch.tanh(model.pooler(model.final_norm(x)[:, 0]))
    logits = model.classifier(model.dropout(pooled)).float()
    return logits, model._aux_losses(layers), model._per_example_stats(layers, real)


def _forward(model: DasgMoEModel, trace: bool | None, ids, mask, types):
    """A no-grad forward: minimal (trace None), trace off or trace on."""
    def fn():
        with torch.no_grad():
            if trace is None:
                return minimal_forward(model, ids, mask, types)
            return model(ids, mask, types, trace=trace)
    return fn


def run(quick: bool, threads: int) -> Section:
    sec = Section("tracing", "5. Tracing overhead (small model, eval, no gradients)")
    model = small_model("dasg")
    shapes = [("one sentence", 1, 64), ("batch", 4 if quick else 32, 32 if quick else 128)]
    for label, B, L in shapes:
        ids, mask, types = random_batch(model.config, B, L)
        fns = {name: _forward(model, trace, ids, mask, types)
               for name, trace in (("no tracing code", None), ("trace off", False),
                                   ("trace on", True))}
        minimal, off, on = (fn() for fn in fns.values())
        sec.check(f"{label}: trace off logits == no-tracing-code logits", off.logits,
                  minimal[0], 1e-6, 1e-6)
        sec.check(f"{label}: trace off flops == no-tracing-code flops", off.flops,
                  minimal[2]["flops"], 1e-6, 1e-6)
        sec.check(f"{label}: trace on logits == trace off logits", on.logits, off.logits,
                  1e-5, 1e-5)
        times = compare(fns, rounds=3 if quick else 45, threads=threads,
                        block_s=block_seconds(quick, 0.1))
        base, off = times["no tracing code"], times["trace off"]
        for name, t in times.items():
            sec.rows.append({"input": f"{label} ({B}x{L})", "forward": name, **t.as_ms(),
                             "vs_no_tracing_code": round(paired_ratio(t, base), 3),
                             "vs_trace_off": round(paired_ratio(t, off), 3)})
        sec.target(f"{label}: trace off / no tracing code", paired_ratio(off, base), 1.03,
                   "lower", "x", note="median of per-round paired ratios")
        sec.target(f"{label}: trace on / trace off", paired_ratio(times["trace on"], off), 1.5,
                   "lower", "x", note="median of per-round paired ratios")
        sec.profiles[f"{label}: trace on"] = top_ops(fns["trace on"], n=10, quick=quick)
    return sec
