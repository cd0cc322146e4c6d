"""Expert dispatch: the only place tokens are permuted (DESIGN.md §2.3, §3 "FLOPs").

Every (token, expert) assignment is sorted by expert, each expert runs once on its contiguous
slice of tokens, and the weighted outputs are added back to their tokens. The Python loop is
over experts (a handful), never over tokens. Dropless: every assignment is computed.

The FLOPs recorded for a token are exactly the FLOPs the dispatcher executed on its behalf,
so the trace, the compute reward and the benchmarks all count the same thing.

Shape legend: T tokens, D model dim, K assignment slots per token, E experts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DispatchResult:
    out: Tensor  # [T, D] gate-weighted sum of the experts' outputs
    tokens_per_expert: Tensor  # [E] int64, assignments each expert computed
    flops: Tensor  # [T] float, FLOPs executed for each token


def dispatch(x: Tensor, expert_idx: Tensor, gate: Tensor,
             expert_forward: Callable[[int, Tensor], Tensor],
             flops_per_expert: Tensor) -> DispatchResult:
    """Run each token through its experts and combine.

    x: [T, D]; expert_idx: [T, K] int (-1 marks an unused slot); gate: [T, K];
    expert_forward(e, x_e) runs expert e on x_e: [T_e, D]; flops_per_expert: [E] FLOPs of one
    token through expert e.

    Copies kept to the minimum (issue 6, measured in bench/): the slots are sorted once with
    the unused ones (-1) first, so one `bincount` gives both the number of unused slots to skip
    and the tokens per expert, with no boolean-mask copies; each expert's gate-weighted output
    is added straight into `out`, so the [A, D] outputs are never concatenated. A token's FLOPs
    are read from its own slots (no scatter).
    """
    T, K = expert_idx.shape
    E = flops_per_expert.shape[0]
    flat_expert = expert_idx.reshape(-1)  # [T*K]
    counts = torch.bincount(flat_expert + 1, minlength=E + 1)  # [E+1]: unused slots, then experts
    order = torch.argsort(flat_expert, stable=True)  # [T*K] grouped by expert, unused first
    n_unused, *sizes = counts.tolist()  # one host sync: the slice sizes
    order = order[n_unused:]  # [A] assignments, A = T*K - unused
    token = order // K  # [A]
    weight = gate.reshape(-1)[order].unsqueeze(-1)  # [A, 1]

    out = torch.zeros_like(x)  # [T, D]
    for e, (token_e, weight_e) in enumerate(zip(token.split(sizes), weight.split(sizes),
                                                strict=True)):  # loop over experts
        if token_e.shape[0]:
            y = expert_forward(e, x[token_e])  # [T_e, D]
            out.index_add_(0, token_e, (y * weight_e).to(x.dtype))
    used = expert_idx >= 0  # [T, K]
    slot_flops = flops_per_expert.float()[expert_idx.clamp_min(0)]  # [T, K]
    flops = torch.where(used, slot_flops, 0.0).sum(dim=-1)  # [T]
    return DispatchResult(out, counts[1:], flops)
