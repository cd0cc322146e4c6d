"""GLUE classification tasks through Hugging Face `datasets` (DESIGN.md §5).

Two sources, same schema: the `nyu-mll/glue` dataset on the Hub, or a local folder of
Parquet files `<data_dir>/<task>/<split>.parquet` (byte-identical to the Hub's files; see
`../shared/data/glue/README.md`). The folder comes from an argument or the environment
variable `DASG_DATA_DIR`; without either we go to the Hub.

Only classification tasks are supported (MRPC, SST-2, RTE, CoLA). STS-B is regression,
which the classification head does not serve yet, so `get_task("stsb")` refuses it.

Shape legend: B batch, L tokens per sequence.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import datasets
import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from tokenizers import Tokenizer

from .tokenizer import configured_tokenizer, encode_batch

DATA_DIR_ENV = "DASG_DATA_DIR"
HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    """What the code needs to know about one GLUE task."""

    name: str
    text_columns: tuple[str, ...]  # one column (single sentence) or two (sentence pair)
    label_names: tuple[str, ...]   # index = label id, as in the dataset's ClassLabel
    metrics: tuple[str, ...]       # names understood by `compute_metrics`, in display order

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair tasks (segment ids 0 and 1)."""
        return len(self.text_columns) == 2


# Read-only view: the registry is shared module state, so nobody may mutate it.
GLUE_TASKS: MappingProxyType[str, TaskSpec] = MappingProxyType({
    "mrpc": TaskSpec("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                     ("accuracy", "f1")),
    "sst2": TaskSpec("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
    "rte": TaskSpec("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"),
                    ("accuracy",)),
    "cola": TaskSpec("cola", ("sentence",), ("unacceptable", "acceptable"),
                     ("matthews", "accuracy")),
})

# GLUE tasks we know about but cannot train yet, with the reason.
_UNSUPPORTED = MappingProxyType({
    "stsb": "is a regression task; regression tasks are not supported yet",
})


def get_task(task: str) -> TaskSpec:
    """The spec of a supported task; a clear ValueError for anything else."""
    key = task.lower()
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    supported = ", ".join(sorted(GLUE_TASKS))
    reason = _UNSUPPORTED.get(key, "is not a known GLUE task")
    raise ValueError(f"task {task!r} {reason}; supported tasks: {supported}")


def resolve_data_dir(data_dir: str | None) -> str | None:
    """Local GLUE folder: the argument, else $DASG_DATA_DIR, else None (= the Hub)."""
    return data_dir or os.environ.get(DATA_DIR_ENV) or None


def load_glue(task: str, split: str, data_dir: str | None = None) -> datasets.Dataset:
    """One split of a GLUE task, from the local Parquet folder if set, else from the Hub."""
    spec = get_task(task)
    root = resolve_data_dir(data_dir)
    if root is None:
        return datasets.load_dataset(HUB_DATASET, spec.name, split=split)
    path = Path(root) / spec.name / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file not found: {path} (from data_dir / ${DATA_DIR_ENV})")
    ds = datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
    # A wrong folder (say, another task's files) should fail here, not deep in training.
    missing = [c for c in (*spec.text_columns, "label") if c not in ds.column_names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing} expected for {spec.name}")
    return ds


def compute_metrics(task: str, labels: Sequence[int], predictions: Sequence[int]) -> dict:
    """The task's metrics as floats: accuracy, f1 (positive class 1), matthews (CoLA)."""
    spec = get_task(task)
    y_true = np.asarray(labels).astype(int)
    y_pred = np.asarray(predictions).astype(int)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} must be "
                         "1-D and of equal length")
    if y_true.size == 0:
        raise ValueError("no examples to score")
    if (y_true < 0).any():
        # GLUE hides test labels as -1 (all tasks here but MRPC).
        raise ValueError("labels contain -1 (hidden test labels); score a labelled split")
    scorers = {
        "accuracy": lambda: accuracy_score(y_true, y_pred),
        "f1": lambda: f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0),
        "matthews": lambda: matthews_corrcoef(y_true, y_pred),
    }
    return {name: float(scorers[name]()) for name in spec.metrics}


def _text_lists(rows: dict, spec: TaskSpec) -> tuple[list[str], list[str] | None]:
    """The first (and, for pair tasks, second) text column of a slice of rows."""
    first = list(rows[spec.text_columns[0]])
    second = list(rows[spec.text_columns[1]]) if spec.is_pair else None
    return first, second


def batches(dataset: datasets.Dataset, tok: Tokenizer, task: str, batch_size: int, max_len: int,
            shuffle: bool = False, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """One pass over `dataset` as dicts of tensors: input_ids, token_type_ids, attention_mask
    ([B, L] int64, padded to the longest in the batch) and labels ([B] int64).

    With `shuffle`, the order is a permutation drawn from `seed` (same seed, same order).
    The last batch may be smaller. Test splits yield their hidden labels (-1) as they are.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    spec = get_task(task)
    n = len(dataset)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    # Configure truncation + padding once: a copy per batch would cost ~30 ms each.
    ready = configured_tokenizer(tok, max_len, pad=True)
    for start in range(0, n, batch_size):
        rows = dataset[order[start:start + batch_size].tolist()]
        texts, pairs = _text_lists(rows, spec)
        batch = encode_batch(ready, texts, pairs, max_len=max_len)
        batch["labels"] = torch.tensor(list(rows["label"]), dtype=torch.long)  # [B]
        yield batch
