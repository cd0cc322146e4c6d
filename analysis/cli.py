"""Pieces shared by the analysis commands: arguments, loading, where the cache lives.

Every command takes `--out DIR` (the report folder) and the same data options; the cache
(`cache.py`) is on by default and `--no-cache` turns it off.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dasg_moe.checkpoint import Checkpoint, load_checkpoint
from dasg_moe.config import DasgConfig
from dasg_moe.data import get_task, load_glue
from dasg_moe.runtime import resolve_device

from .cache import checkpoint_cache_dir, default_cache_root


def add_data_arguments(parser: argparse.ArgumentParser, task_required: bool = False) -> None:
    """--task, --split, --data-dir, --max-examples, --batch-size."""
    parser.add_argument("--task", required=task_required,
                        help="GLUE task (default: the checkpoint's task)")
    parser.add_argument("--split", default="validation", help="dataset split (default: "
                                                              "validation)")
    parser.add_argument("--data-dir", help="local GLUE Parquet folder (else $DASG_DATA_DIR, "
                                           "else the Hugging Face Hub)")
    parser.add_argument("--max-examples", type=int,
                        help="use only the first N examples of the split (quick looks, tests)")
    parser.add_argument("--batch-size", type=int, default=32)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--out, --cache-dir, --no-cache, --no-progress, --device."""
    parser.add_argument("--out", required=True, help="report folder (created if missing)")
    parser.add_argument("--cache-dir", help="cache root (default: $DASG_ANALYSIS_CACHE, else "
                                            ".cache/analysis)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the "
                                                                "cache")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")


def open_checkpoint(path: str | Path, device: str = "auto") -> Checkpoint:
    """Load and validate a checkpoint; "auto" puts it on the GPU when there is one."""
    return load_checkpoint(path, resolve_device(device))


def resolve_task(task: str | None, config: DasgConfig) -> str:
    """The task asked for, else the checkpoint's; validated."""
    return get_task(task or config.task).name


def load_examples(task: str, split: str, data_dir: str | None, max_examples: int | None):
    """The split as a `datasets.Dataset`, cut to its first `max_examples` rows."""
    dataset = load_glue(task, split, data_dir)
    if max_examples is not None:
        if max_examples < 1:
            raise ValueError(f"--max-examples must be positive, got {max_examples}")
        dataset = dataset.select(range(min(max_examples, len(dataset))))
    return dataset


def cache_dir_for(args: argparse.Namespace, checkpoint: str | Path) -> Path | None:
    """The checkpoint's cache folder, or None with --no-cache."""
    if args.no_cache:
        return None
    return checkpoint_cache_dir(checkpoint, args.cache_dir or default_cache_root())


def label_names(config: DasgConfig, task: str) -> list[str]:
    """Label names by id: the checkpoint's id2label, else the task's."""
    spec = get_task(task)
    return [config.id2label.get(i, spec.label_names[i] if i < spec.num_labels else str(i))
            for i in range(config.num_labels)]


def data_description(task: str, split: str, n_examples: int, max_examples: int | None) -> str:
    """'mrpc validation (408 examples)' or '... (first 50 examples)'."""
    cut = f"first {n_examples}" if max_examples is not None else str(n_examples)
    return f"{task} {split} ({cut} examples)"
