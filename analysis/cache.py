"""On-disk cache for dataset traces and sweeps: Parquet files, written atomically.

Layout (one folder per checkpoint *content*, so retraining into the same folder never serves
stale traces):

```
<root>/                              default .cache/analysis, or $DASG_ANALYSIS_CACHE
  <checkpoint name>-<fingerprint>/   checkpoint_cache_dir()
    trace-<task>-<data>-ts0.300-td0.700/part-0000000-0000512.{tokens,examples}.parquet
    sweep-<task>-<data>-simple0.300/ts0.300-td0.700.parquet
    counts-<task>-train.parquet      token frequencies in the training split
```

`<data>` is a content hash of the examples, so `--max-examples 100` and the full split never
share files. Every file is written to a temporary name in the same folder and renamed into
place (`os.replace`), so an interrupted run leaves either a whole file or none: rerunning the
same command resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from dasg_moe.checkpoint import atomic_write

CACHE_ENV = "DASG_ANALYSIS_CACHE"
DEFAULT_CACHE = Path(".cache") / "analysis"
# Bump when the layout or the columns of cached frames change: old files are then ignored.
CACHE_VERSION = 1
# Columns of the trace frame that hold one list per row (Parquet gives them back as arrays).
LIST_COLUMNS = ("experts", "gate_weights", "router_probs")


def default_cache_root() -> Path:
    """$DASG_ANALYSIS_CACHE if set, else `.cache/analysis` under the working directory."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _hash_files(paths: Iterable[Path]) -> str:
    """sha256 over the names and bytes of `paths` (read in 1 MiB blocks) and the cache
    version, so a layout change invalidates every key."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def checkpoint_fingerprint(checkpoint: str | Path) -> str:
    """sha256 over the checkpoint's config, weights and tokenizer (about 0.2 s per 100 MB)."""
    folder = Path(checkpoint)
    files = [folder / name for name in ("config.json", "model.safetensors", "tokenizer.json")]
    return _hash_files(p for p in files if p.is_file())


def checkpoint_cache_dir(checkpoint: str | Path, root: str | Path | None = None) -> Path:
    """The cache folder of one checkpoint: `<root>/<folder name>-<12 hex of its content>`."""
    root = Path(root) if root is not None else default_cache_root()
    name = Path(checkpoint).resolve().name
    return root / f"{name}-{checkpoint_fingerprint(checkpoint)[:12]}"


def dataset_fingerprint(dataset, columns: Sequence[str]) -> str:
    """12 hex digits identifying the rows of `columns` (texts and labels) of a `datasets`
    Dataset or a DataFrame; order matters, as it does for the example index."""
    frame = dataset if isinstance(dataset, pd.DataFrame) else dataset.select_columns(
        list(columns)).to_pandas()
    hashed = pd.util.hash_pandas_object(frame[list(columns)], index=True)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:12]


def threshold_tag(theta_s: float, theta_d: float) -> str:
    """File-name form of a threshold pair, e.g. `ts0.300-td0.700`."""
    return f"ts{theta_s:.3f}-td{theta_d:.3f}"


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    """Atomically write `frame` (index dropped) as Parquet."""
    atomic_write(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def read_parquet(path: str | Path) -> pd.DataFrame:
    """Read a cached frame; list columns come back as Python lists, as `to_frame` made them."""
    frame = pd.read_parquet(path)
    for column in LIST_COLUMNS:
        if column in frame.columns:
            frame[column] = [v.tolist() for v in frame[column]]
    return frame


def write_json(data: dict, path: str | Path) -> None:
    """Atomically write `data` as indented JSON."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
