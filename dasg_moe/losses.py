"""Auxiliary losses: pure functions of router outputs (DESIGN.md §2.3).

Padding never reaches these functions: the MoE layers route real tokens only.

Shape legend: T tokens, E experts, K slots per token.
"""

from __future__ import annotations

import torch
from torch import Tensor


def load_balancing_loss(probs: Tensor, expert_idx: Tensor) -> Tensor:
    """Switch Transformer load balancing, E * sum_e f_e * P_e (Fedus et al. 2021, eq. 4).

    probs: [T, E] router softmax; expert_idx: [T, K] picks (-1 = unused slot).
    f_e is the share of tokens sent to expert e (summed over the K slots, as in Hugging Face
    Mixtral), P_e the mean router probability. Uniform routing gives K (1 for Switch).
    """
    T, E = probs.shape
    if T == 0:
        return probs.new_zeros(())
    picked = torch.zeros_like(probs).scatter_add_(
        1, expert_idx.clamp_min(0), (expert_idx >= 0).to(probs.dtype))  # [T, E]
    fraction = picked.mean(dim=0)  # [E]
    mean_prob = probs.mean(dim=0)  # [E]
    return E * (fraction * mean_prob).sum()


def compute_penalty(p_deep: Tensor) -> Tensor:
    """Expected deep-tier rate, penalised to make compute cost visible to training."""
    return p_deep.mean() if p_deep.numel() else p_deep.new_zeros(())
