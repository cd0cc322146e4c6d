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
    """
    T, K = expert_idx.shape
    E = flops_per_expert.shape[0]
    flat_expert = expert_idx.reshape(-1)  # [T*K]
    used = flat_expert >= 0
    token = torch.arange(T, device=x.device).repeat_interleave(K)[used]  # [A] assignments
    expert = flat_expert[used]
    weight = gate.reshape(-1)[used]
    order = torch.argsort(expert, stable=True)
    token, expert, weight = token[order], expert[order], weight[order]
    tokens_per_expert = torch.bincount(expert, minlength=E)  # [E]

    outputs = []
    for e, x_e in enumerate(x[token].split(tokens_per_expert.tolist())):  # loop over experts
        if x_e.shape[0]:
            outputs.append(expert_forward(e, x_e))
    y = torch.cat(outputs) if outputs else x.new_zeros(0, x.shape[1])  # [A, D]
    y = y * weight.unsqueeze(-1).to(y.dtype)
    out = torch.zeros_like(x).index_add_(0, token, y.to(x.dtype))  # [T, D]
    flops = torch.zeros(T, device=x.device).index_add_(0, token,
                                                       flops_per_expert[expert].float())
    return DispatchResult(out, tokens_per_expert, flops)
