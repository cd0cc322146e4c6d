"""Dual-Scale Shared Experts, DSSE (DESIGN.md §2.2; paper §4.3).

Experts of one tier are stored as 3-D weights (expert index first) so that the dispatcher can
run each expert on its contiguous slice of tokens without any per-token Python loop.

- Shallow expert: one hidden layer, D -> F -> D.
- Deep expert: three hidden layers. Layer 1 (D -> F) is a *copy* of the matching shallow
  expert's first layer and frozen ("pre-training transfer"); layers 2 (F -> Fd) and 3
  (Fd -> F) train ("post-training optimisation"); the output of layer 1 is added to the output
  of layer 3 (the paper's residual h3 = act(W3 h2) + h1) before the output projection F -> D.
  Paper silent on widths and initialisation; we copy the shallow output projection too and
  start layer 3 at zero, so right after transfer a deep expert computes exactly what its
  shallow twin computes and training only adds depth where it helps.

Shape legend: T tokens, D model dim, E experts, F expert hidden, Fd deep middle width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _init(*shape: int, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * fan_in**-0.5)


class ShallowExperts(nn.Module):
    """E one-hidden-layer MLPs. Also the dense FFN (E=1) and the MH-MoE sub-token experts."""

    def __init__(self, n_experts: int, d_in: int, d_ff: int) -> None:
        super().__init__()
        self.w_in = _init(n_experts, d_in, d_ff, fan_in=d_in)  # [E, D, F]
        self.b_in = nn.Parameter(torch.zeros(n_experts, d_ff))  # [E, F]
        self.w_out = _init(n_experts, d_ff, d_in, fan_in=d_ff)  # [E, F, D]
        self.b_out = nn.Parameter(torch.zeros(n_experts, d_in))  # [E, D]

    @property
    def n_experts(self) -> int:
        return self.w_in.shape[0]

    def flops_per_token(self) -> int:
        """Multiply-adds of one expert on one token, counted as 2 FLOPs each."""
        _, d_in, d_ff = self.w_in.shape
        return 2 * (d_in * d_ff + d_ff * d_in)

    def expert_forward(self, e: int, x: Tensor) -> Tensor:
        """Run expert `e` on its tokens x: [T_e, D] -> [T_e, D]."""
        # addmm adds the bias inside the matmul: no extra [T_e, F] pass or allocation.
        hidden = F.gelu(torch.addmm(self.b_in[e], x, self.w_in[e]))  # [T_e, F]
        return torch.addmm(self.b_out[e], hidden, self.w_out[e])  # [T_e, D]


class DeepExperts(nn.Module):
    """E three-hidden-layer MLPs whose first layer is a frozen copy of a shallow expert's."""

    def __init__(self, n_experts: int, d_model: int, d_ff: int, d_ff_deep: int) -> None:
        super().__init__()
        # Layer 1: frozen (requires_grad=False), overwritten by `transfer_from`.
        self.w1 = nn.Parameter(torch.randn(n_experts, d_model, d_ff) * d_model**-0.5,
                               requires_grad=False)  # [E, D, F]
        self.b1 = nn.Parameter(torch.zeros(n_experts, d_ff), requires_grad=False)  # [E, F]
        self.w2 = _init(n_experts, d_ff, d_ff_deep, fan_in=d_ff)  # [E, F, Fd]
        self.b2 = nn.Parameter(torch.zeros(n_experts, d_ff_deep))
        self.w3 = nn.Parameter(torch.zeros(n_experts, d_ff_deep, d_ff))  # [E, Fd, F]
        self.b3 = nn.Parameter(torch.zeros(n_experts, d_ff))
        self.w_out = _init(n_experts, d_ff, d_model, fan_in=d_ff)  # [E, F, D]
        self.b_out = nn.Parameter(torch.zeros(n_experts, d_model))

    @property
    def n_experts(self) -> int:
        return self.w1.shape[0]

    def flops_per_token(self) -> int:
        _, d_model, d_ff = self.w1.shape
        d_ff_deep = self.w2.shape[-1]
        return 2 * (d_model * d_ff + d_ff * d_ff_deep + d_ff_deep * d_ff + d_ff * d_model)

    def expert_forward(self, e: int, x: Tensor) -> Tensor:
        h1 = F.gelu(torch.addmm(self.b1[e], x, self.w1[e]))  # [T_e, F]   frozen layer 1
        h2 = F.gelu(torch.addmm(self.b2[e], h1, self.w2[e]))  # [T_e, Fd]
        h3 = F.gelu(torch.addmm(self.b3[e], h2, self.w3[e])) + h1  # [T_e, F] residual from h1
        return torch.addmm(self.b_out[e], h3, self.w_out[e])  # [T_e, D]

    @torch.no_grad()
    def transfer_from(self, shallow: ShallowExperts, source: tuple[int, ...]) -> None:
        """Pre-training transfer: deep expert e copies shallow expert source[e].

        Layer 1 is copied (a separate tensor, not tied, so checkpoints stay plain safetensors)
        and stays frozen; the output projection is copied as a starting point and trains.
        """
        index = torch.tensor(source, dtype=torch.long, device=self.w1.device)
        self.w1.copy_(shallow.w_in[index])
        self.b1.copy_(shallow.b_in[index])
        self.w_out.copy_(shallow.w_out[index])
        self.b_out.copy_(shallow.b_out[index])
        self.w3.zero_()
        self.b3.zero_()
