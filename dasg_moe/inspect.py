"""Inspect one text: prediction and routing trace from one forward pass (DESIGN.md §3, §6).

`inspect_text` is what the app's Inspect page calls; `python -m dasg_moe.inspect` prints the
same as JSON: the prediction with its probabilities and, for each layer and token, the token
text, importance, complexity, score, tier, experts and gate weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass

import pandas as pd
import torch
from tokenizers import Tokenizer

from .checkpoint import CheckpointError, load_checkpoint
from .model import DasgMoEModel
from .routers import RoutingOverrides
from .runtime import autocast, resolve_device
from .tokenizer import EncodedText, encode
from .trace import RoutingTrace


@dataclass(frozen=True)
class Inspection:
    """Everything the Inspect page shows, from one forward pass."""

    encoded: EncodedText
    label_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    trace: RoutingTrace
    frame: pd.DataFrame  # trace.to_frame() with token text and character offsets
    theta_s: float
    theta_d: float

    @property
    def prediction(self) -> str:
        return self.label_names[max(range(len(self.probabilities)),
                                    key=self.probabilities.__getitem__)]


@torch.no_grad()
def inspect_text(model: DasgMoEModel, tokenizer: Tokenizer, text: str,
                 text_pair: str | None = None, overrides: RoutingOverrides | None = None,
                 max_len: int | None = None) -> Inspection:
    """Encode `text` (and `text_pair`), run the model once with tracing, return it all.

    Raises ValueError for empty text or invalid thresholds; long text is truncated to the
    model's max_len and `encoded.truncated` says so. Safe to call from several threads on
    one shared model and tokenizer: nothing is written to either.

    A tokenizer file may store truncation or padding (MiniLM's does); `encode` then copies
    the tokenizer on every call to turn them off. Callers that inspect many texts configure
    it once, `configured_tokenizer(tokenizer, None)`, and pass that (the app does).
    """
    cfg = model.config
    overrides = overrides or RoutingOverrides()
    theta_s, theta_d = overrides.thresholds(cfg)
    encoded = encode(tokenizer, text, text_pair or None, max_len=min(max_len or cfg.max_len,
                                                                     cfg.max_len))
    device = next(model.parameters()).device
    ids = torch.tensor([encoded.input_ids], device=device)
    if int(ids.max()) >= cfg.vocab_size:
        raise ValueError(f"the tokenizer produced id {int(ids.max())} but the model has "
                         f"vocab_size {cfg.vocab_size}: tokenizer and model do not match")
    with autocast(device):
        out = model(ids, torch.ones_like(ids), torch.tensor([encoded.token_type_ids],
                                                             device=device),
                    trace=True, overrides=overrides)
    probs = out.logits.float().softmax(-1)[0].tolist()
    names = tuple(cfg.id2label.get(i, str(i)) for i in range(cfg.num_labels))
    frame = out.trace.to_frame(tokens=[encoded.tokens], offsets=[encoded.offsets])
    return Inspection(encoded, names, tuple(probs), out.trace, frame, theta_s, theta_d)


def _clean(value):
    """JSON-friendly: NaN becomes null, numpy scalars become Python numbers."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def to_json(result: Inspection) -> dict:
    layers = []
    for layer, frame in result.frame.groupby("layer", sort=True):
        tokens = [{key: _clean(row[key]) if not isinstance(row[key], list) else row[key]
                   for key in ("position", "token", "start", "end", "segment", "importance",
                               "complexity", "score", "tier", "experts", "gate_weights",
                               "flops")}
                  for row in frame.to_dict("records")]
        layers.append({"layer": int(layer), "tokens": tokens})
    return {"prediction": result.prediction,
            "probabilities": dict(zip(result.label_names, result.probabilities, strict=True)),
            "truncated": result.encoded.truncated,
            "n_tokens": len(result.encoded.input_ids),
            "theta_s": result.theta_s, "theta_d": result.theta_d,
            "router": result.trace.router, "layers": layers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dasg_moe.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--text-pair")
    parser.add_argument("--theta-s", type=float)
    parser.add_argument("--theta-d", type=float)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the full trace as JSON")
    args = parser.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
        result = inspect_text(ckpt.model, ckpt.tokenizer, args.text, args.text_pair,
                              RoutingOverrides(args.theta_s, args.theta_d))
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(to_json(result), indent=1, ensure_ascii=False))
    else:
        probs = ", ".join(f"{n}={p:.3f}" for n, p in zip(result.label_names,
                                                          result.probabilities, strict=True))
        print(f"prediction: {result.prediction} ({probs})")
        if result.encoded.truncated:
            print(f"note: input truncated from {result.encoded.n_tokens_before_truncation} "
                  f"to {len(result.encoded.input_ids)} tokens")
        summary = result.frame.groupby(["layer", "tier"]).size().unstack(fill_value=0)
        print(summary.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
