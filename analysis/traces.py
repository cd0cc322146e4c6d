"""Routing traces over a whole dataset split (DESIGN.md §3), the input of every analysis.

`trace_dataset` runs the model batch by batch with `trace=True` and returns two frames:

- tokens: `RoutingTrace.to_frame()` of every batch, one row per (example, layer, real token),
  with the token text and character offsets, and `example` made global (the row index of the
  example in `dataset`);
- examples: one row per example: `example`, `text` / `text_pair`, `label`, `prediction`,
  `prob` (of the predicted label), `correct`, and the routing totals of
  `dasg_moe.evaluate.predict` (`n_tokens`, `flops`, `deep_decisions`, `tier_decisions`,
  `expert_slots`, `moe_tokens`), so `dasg_moe.evaluate.summarise(task, examples)` works on it.

Both come from the same forward pass, so the routing shown is the routing that made the
prediction. With `cache_dir` the frames are cached in chunks of examples (see `cache.py`):
an interrupted run resumes from the last complete chunk.

`predict_routing` is the cheap sibling for threshold sweeps: the same forward pass, but the
trace is reduced to per-example counts of over-routed decisions instead of a token frame.

Shape legend: B batch, L tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer
from torch import Tensor
from tqdm.auto import tqdm

from dasg_moe.data import batches, get_task
from dasg_moe.model import DasgMoEModel, ModelOutput
from dasg_moe.routers import RoutingOverrides
from dasg_moe.runtime import autocast
from dasg_moe.tokenizer import configured_tokenizer

from .cache import dataset_fingerprint, read_parquet, threshold_tag, write_json, write_parquet

# Same substitution as dasg_moe.tokenizer (lone UTF-16 surrogates -> U+FFFD), so the token
# strings we show match the ids `batches` fed to the model.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Per-example columns of `dasg_moe.evaluate.predict`, read from ModelOutput.
_TOTALS = ("flops", "deep_decisions", "tier_decisions", "expert_slots", "moe_tokens")


def _traced_batches(model: DasgMoEModel, tokenizer: Tokenizer, task: str, dataset,
                    batch_size: int, overrides: RoutingOverrides,
                    bar: tqdm | None) -> Iterator[tuple[int, dict, ModelOutput]]:
    """Yield (index of the batch's first example, batch on the CPU, model output with trace).

    Batches come from `dasg_moe.data.batches`, exactly as `predict` builds them."""
    device = next(model.parameters()).device
    start = 0
    with torch.no_grad():
        for batch in batches(dataset, tokenizer, task, batch_size, model.config.max_len):
            with autocast(device):
                out = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                            batch["token_type_ids"].to(device), trace=True,
                            overrides=overrides)
            yield start, batch, out
            start += len(batch["labels"])
            if bar is not None:
                bar.update(1)


def _example_rows(start: int, batch: dict, out: ModelOutput) -> pd.DataFrame:
    """predict()'s per-example columns for one batch, with a global `example` index."""
    probs = out.logits.float().softmax(-1).cpu()  # [B, num_labels]
    frame = {"example": np.arange(start, start + len(batch["labels"])),
             "label": batch["labels"].numpy(), "prediction": probs.argmax(-1).numpy(),
             "prob": probs.max(-1).values.numpy(),
             "n_tokens": batch["attention_mask"].sum(-1).numpy()}
    frame.update({k: getattr(out, k).float().cpu().numpy() for k in _TOTALS})
    return pd.DataFrame(frame)


def _progress(total: int, desc: str, progress: bool) -> tqdm:
    """A batch progress bar on stderr (a no-op when `progress` is False)."""
    return tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="batch")


def _texts(dataset, task: str) -> tuple[list[str], list[str] | None]:
    """The task's first and (pair tasks) second text column, cleaned like `encode_batch`."""
    spec = get_task(task)
    first = [_LONE_SURROGATE.sub("\ufffd", t) for t in dataset[spec.text_columns[0]]]
    second = ([_LONE_SURROGATE.sub("\ufffd", t) for t in dataset[spec.text_columns[1]]]
              if spec.is_pair else None)
    return first, second


def _trace_chunk(model: DasgMoEModel, tokenizer: Tokenizer, task: str, dataset, offset: int,
                 batch_size: int, overrides: RoutingOverrides,
                 bar: tqdm | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trace `dataset` (a slice starting at example `offset`); see `trace_dataset`."""
    texts, pairs = _texts(dataset, task)
    # Token strings and offsets: the same tokenizer settings as `batches`, minus the padding.
    plain = configured_tokenizer(tokenizer, model.config.max_len)
    token_frames, example_frames = [], []
    for start, batch, out in _traced_batches(model, tokenizer, task, dataset, batch_size,
                                             overrides, bar):
        stop = start + len(batch["labels"])
        inputs = (list(zip(texts[start:stop], pairs[start:stop], strict=True))
                  if pairs is not None else texts[start:stop])
        encs = plain.encode_batch(inputs)
        for row, enc in enumerate(encs):  # the two tokenisations must agree id for id
            n = len(enc.ids)
            if enc.ids != batch["input_ids"][row, :n].tolist():
                raise RuntimeError(f"example {offset + start + row}: token strings do not "
                                   "match the ids the model saw")
        frame = out.trace.to_frame(tokens=[e.tokens for e in encs],
                                   offsets=[e.offsets for e in encs])
        frame["example"] += offset + start
        token_frames.append(frame)
        rows = _example_rows(offset + start, batch, out)
        rows.insert(1, "text", texts[start:stop])
        rows.insert(2, "text_pair", pairs[start:stop] if pairs is not None else None)
        example_frames.append(rows)
    examples = pd.concat(example_frames, ignore_index=True)
    examples.insert(examples.columns.get_loc("prob") + 1, "correct",
                    examples["label"] == examples["prediction"])
    return pd.concat(token_frames, ignore_index=True), examples


def trace_key(task: str, dataset, overrides: RoutingOverrides, model: DasgMoEModel) -> str:
    """Cache sub-folder name of one traced dataset: task, data hash, thresholds in force."""
    spec = get_task(task)
    theta_s, theta_d = overrides.thresholds(model.config)
    force = f"-force{overrides.force_tier}" if overrides.force_tier else ""
    data = dataset_fingerprint(dataset, [*spec.text_columns, "label"])
    return f"trace-{spec.name}-{data}-{threshold_tag(theta_s, theta_d)}{force}"


def trace_dataset(model: DasgMoEModel, tokenizer: Tokenizer, task: str, dataset, *,
                  batch_size: int = 32, overrides: RoutingOverrides | None = None,
                  progress: bool = True, cache_dir: str | Path | None = None,
                  chunk_size: int = 512) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trace every example of `dataset` (a `datasets.Dataset` of a GLUE task).

    Returns (tokens, examples); see the module docstring for their columns. `overrides`
    changes the routing thresholds for this call. `cache_dir` is the checkpoint's cache
    folder (`cache.checkpoint_cache_dir`); the traces are stored under it per task, data
    content and thresholds, `chunk_size` examples per file. `tokens.attrs` holds `router`
    and `expert_labels` (the name of each global expert index, "S0".."D3" for DASG).
    """
    overrides = overrides or RoutingOverrides()
    overrides.thresholds(model.config)  # validate before any work
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty: nothing to trace")
    folder = Path(cache_dir) / trace_key(task, dataset, overrides, model) if cache_dir else None
    chunks = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]

    def files(s: int, e: int) -> tuple[Path, Path]:
        stem = folder / f"part-{s:07d}-{e:07d}"
        return stem.with_suffix(".tokens.parquet"), stem.with_suffix(".examples.parquet")

    # The examples file is written last, so its presence marks a complete chunk.
    todo = [c for c in chunks if folder is None or not files(*c)[1].is_file()]
    bar = _progress(sum(math.ceil((e - s) / batch_size) for s, e in todo),
                    f"trace {task}", progress)
    token_parts, example_parts = [], []
    with bar:
        for s, e in chunks:
            if (s, e) in todo:
                tokens, examples = _trace_chunk(model, tokenizer, task,
                                                dataset.select(range(s, e)), s, batch_size,
                                                overrides, bar)
                if folder is not None:
                    write_parquet(tokens, files(s, e)[0])
                    write_parquet(examples, files(s, e)[1])
            else:
                tokens, examples = read_parquet(files(s, e)[0]), read_parquet(files(s, e)[1])
            token_parts.append(tokens)
            example_parts.append(examples)
    tokens = pd.concat(token_parts, ignore_index=True)
    examples = pd.concat(example_parts, ignore_index=True)
    tokens.attrs.update(router=model.config.router, expert_labels=list(model.expert_labels()))
    if folder is not None and todo:  # what the parts hold, for a person browsing the cache
        write_json({"router": model.config.router, "n_examples": n,
                    "thresholds": list(overrides.thresholds(model.config)),
                    "expert_labels": list(model.expert_labels())}, folder / "meta.json")
    return tokens, examples


def _overrouting_counts(out: ModelOutput, simple_below: float) -> tuple[Tensor, Tensor]:
    """Per example: deep-tier decisions on simple tokens (C < simple_below) and all tier
    decisions on simple tokens, summed over MoE layers. [B] each."""
    trace = out.trace
    overrouted = torch.zeros(trace.token_mask.shape[0])
    simple = torch.zeros_like(overrouted)
    for rec in trace.records:
        decided = rec.token_mask & (rec.tier >= 0)  # [B, L]; tier -1 = no tier decision
        is_simple = decided & (rec.complexity < simple_below)  # NaN complexity: never simple
        simple += is_simple.sum(1)
        overrouted += (is_simple & (rec.tier == 1)).sum(1)
    return overrouted, simple


def predict_routing(model: DasgMoEModel, tokenizer: Tokenizer, task: str, dataset, *,
                    overrides: RoutingOverrides | None = None, simple_below: float = 0.3,
                    batch_size: int = 32, progress: bool = True,
                    desc: str | None = None) -> pd.DataFrame:
    """`dasg_moe.evaluate.predict`'s per-example frame plus two columns from the trace:
    `overrouted_decisions` (deep-tier decisions on tokens with complexity C < simple_below)
    and `simple_decisions` (tier decisions on such tokens). No token frame is built, so this
    costs about what `predict` costs. `summarise(task, frame)` gives the metrics."""
    overrides = overrides or RoutingOverrides()
    overrides.thresholds(model.config)
    rows = []
    bar = _progress(math.ceil(len(dataset) / batch_size), desc or f"predict {task}", progress)
    with bar:
        for start, batch, out in _traced_batches(model, tokenizer, task, dataset, batch_size,
                                                 overrides, bar):
            frame = _example_rows(start, batch, out)
            overrouted, simple = _overrouting_counts(out, simple_below)
            frame["overrouted_decisions"] = overrouted.numpy()
            frame["simple_decisions"] = simple.numpy()
            rows.append(frame)
    return pd.concat(rows, ignore_index=True)



def routing_frame_from_trace(tokens: pd.DataFrame, examples: pd.DataFrame,
                             simple_below: float) -> pd.DataFrame:
    """The `predict_routing` frame of a dataset already traced by `trace_dataset`, so a
    sweep need not run the traced thresholds again."""
    rows = tier_rows(tokens)
    simple = simple_mask(rows, simple_below)
    counts = pd.DataFrame({"example": rows["example"], "simple": simple,
                           "over": simple & rows["tier"].eq("deep")}).groupby("example").sum()
    columns = ["example", "label", "prediction", "prob", "n_tokens", *_TOTALS]
    out = examples[columns].copy()
    out["overrouted_decisions"] = out["example"].map(counts["over"]).fillna(0).astype(float)
    out["simple_decisions"] = out["example"].map(counts["simple"]).fillna(0).astype(float)
    return out


# Helpers on trace frames, shared by the analyses ----------------------------------------------


def tier_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows that carry a tier decision (tier "shallow" or "deep"): MoE layers of routers
    with tiers. Empty for one-tier routers, whose tier is "none"."""
    return frame[frame["tier"].isin(("shallow", "deep"))]


def simple_mask(frame: pd.DataFrame, simple_below: float | None = None) -> pd.Series:
    """True where the evaluator scored the token simple: complexity C < simple_below (the
    row's theta_s in force when None). NaN complexity (no evaluator) is never simple."""
    limit = frame["theta_s"] if simple_below is None else simple_below
    return frame["complexity"] < limit


def expert_set_key(experts) -> str:
    """A hashable key for the set of experts a token used ("2,5"); sub-token repeats
    (MH-MoE) count once."""
    return ",".join(str(e) for e in sorted(set(experts)))
