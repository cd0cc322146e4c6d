"""Device and precision choice shared by the command-line tools and the app (DESIGN.md §6).

The model runs on an NVIDIA GPU when one is present, under bfloat16 autocast there, and on
the CPU in float32 otherwise; the code path is the same.
"""

from __future__ import annotations

import contextlib

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` or "auto" picks the GPU when present; asking for CUDA without one is an error."""
    if device is None or device == "auto":
        return default_device()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no GPU is available; use device='cpu'")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA, nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
