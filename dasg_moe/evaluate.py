"""Evaluate a checkpoint on a GLUE split (DESIGN.md §5; `python -m dasg_moe.evaluate`).

Prints one JSON object: accuracy, F1 (where GLUE reports it), Matthews correlation (CoLA),
deep-tier rate, mean experts per token, FFN FLOPs per token, and the thresholds in force.
The same `evaluate_model` backs `train.py`, the analysis sweeps and the app.

Definitions (per split, over real tokens and MoE layers):
- deep_tier_rate = (token, layer) decisions sent to the deep tier / all tier decisions
  (NaN for routers without tiers);
- mean_experts_per_token = expert computations / (token, MoE layer) pairs;
- flops_per_token = FFN FLOPs the dispatcher executed, summed over layers, per real token.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_checkpoint
from .data import batches, compute_metrics, get_task, load_glue
from .model import DasgMoEModel
from .routers import RoutingOverrides
from .runtime import autocast, resolve_device


@torch.no_grad()
def predict(model: DasgMoEModel, tokenizer, task: str, dataset, *, batch_size: int = 64,
            max_len: int | None = None, overrides: RoutingOverrides | None = None,
            progress: bool = True) -> pd.DataFrame:
    """Per-example predictions and routing totals: one row per example with columns label,
    prediction, prob (of the predicted label), n_tokens, flops, deep_decisions,
    tier_decisions, expert_slots, moe_tokens."""
    device = next(model.parameters()).device
    max_len = max_len or model.config.max_len
    rows = []
    n_batches = math.ceil(len(dataset) / batch_size)
    for batch in tqdm(batches(dataset, tokenizer, task, batch_size, max_len),
                      total=n_batches, desc=f"evaluate {task}", disable=not progress,
                      leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device):
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                        overrides=overrides)
        probs = out.logits.float().softmax(-1)
        frame = {"label": batch["labels"], "prediction": probs.argmax(-1),
                 "prob": probs.max(-1).values, "n_tokens": batch["attention_mask"].sum(-1),
                 "flops": out.flops, "deep_decisions": out.deep_decisions,
                 "tier_decisions": out.tier_decisions, "expert_slots": out.expert_slots,
                 "moe_tokens": out.moe_tokens}
        rows.append(pd.DataFrame({k: v.cpu().numpy() for k, v in frame.items()}))
    return pd.concat(rows, ignore_index=True)


def summarise(task: str, predictions: pd.DataFrame) -> dict:
    """Task metrics and routing totals from `predict`'s frame."""
    metrics = compute_metrics(task, predictions["label"].tolist(),
                              predictions["prediction"].tolist())
    total = predictions[["n_tokens", "flops", "deep_decisions", "tier_decisions",
                         "expert_slots", "moe_tokens"]].sum()
    ratio = lambda a, b: float(a / b) if b else float("nan")  # noqa: E731
    return {**metrics,
            "deep_tier_rate": ratio(total.deep_decisions, total.tier_decisions),
            "mean_experts_per_token": ratio(total.expert_slots, total.moe_tokens),
            "flops_per_token": ratio(total.flops, total.n_tokens),
            "n_examples": len(predictions), "n_tokens": int(total.n_tokens)}


def evaluate_model(model: DasgMoEModel, tokenizer, task: str, split: str = "validation",
                   data_dir: str | None = None, *, batch_size: int = 64,
                   max_examples: int | None = None, overrides: RoutingOverrides | None = None,
                   progress: bool = True) -> dict:
    """Metrics of `model` on a GLUE split (optionally its first `max_examples` rows)."""
    dataset = load_glue(task, split, data_dir)
    if max_examples is not None:
        dataset = dataset.select(range(min(max_examples, len(dataset))))
    overrides = overrides or RoutingOverrides()
    theta_s, theta_d = overrides.thresholds(model.config)
    frame = predict(model, tokenizer, task, dataset, batch_size=batch_size,
                    overrides=overrides, progress=progress)
    return {"task": task, "split": split, **summarise(task, frame),
            "theta_s": theta_s, "theta_d": theta_d}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dasg_moe.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder")
    parser.add_argument("--task", help="GLUE task (default: the checkpoint's task)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--data-dir", help="local GLUE Parquet folder (else $DASG_DATA_DIR, "
                                           "else the Hugging Face Hub)")
    parser.add_argument("--theta-s", type=float)
    parser.add_argument("--theta-d", type=float)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-examples", type=int)
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    args = parser.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
        task = args.task or ckpt.config.task
        get_task(task)
        result = evaluate_model(ckpt.model, ckpt.tokenizer, task, args.split, args.data_dir,
                                batch_size=args.batch_size, max_examples=args.max_examples,
                                overrides=RoutingOverrides(args.theta_s, args.theta_d))
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                      for k, v in result.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
