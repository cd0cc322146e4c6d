"""DASG-MoE: grouped sliding-window attention, shallow and deep expert tiers and adaptive
routing, with the routers it is compared against, and a routing trace for every forward pass.

Public API:

    from dasg_moe import DasgConfig, DasgMoEModel, RoutingOverrides, load_checkpoint
    ckpt = load_checkpoint("sample_checkpoints/mrpc-dasg-minilm")
    from dasg_moe.inspect import inspect_text   # also `python -m dasg_moe.inspect`
    result = inspect_text(ckpt.model, ckpt.tokenizer, "A sentence.", "Its paraphrase.")
    result.frame  # one row per (layer, token)
"""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import DasgConfig
from .model import DasgMoEModel, ModelOutput
from .routers import RoutingOverrides
from .trace import AttentionMaps, RoutingRecord, RoutingTrace

__all__ = ["AttentionMaps", "Checkpoint", "CheckpointError", "DasgConfig", "DasgMoEModel",
           "ModelOutput", "RoutingOverrides", "RoutingRecord", "RoutingTrace",
           "load_checkpoint", "save_checkpoint"]
