"""Checkpoint folders: save and load, safetensors + JSON only (DESIGN.md §4).

```
<checkpoint>/
  config.json        DasgConfig + "model_type", "architectures", "torch_dtype"
  model.safetensors  weights only (metadata {"format": "pt"}); never a pickle
  tokenizer.json     `tokenizers` tokenizer
  metrics.json       dev metrics and how they were produced
  README.md          model card
```

Loading checks everything it can before a module is built: the config is parsed and
validated; the weight file is opened with `safe_open` (a truncated or corrupt file is caught
here); every tensor name, shape and dtype is compared with what the config implies (taken from
a model built on the meta device, which costs no memory); non-finite values are rejected; only
then is the model built and `load_state_dict(strict=True)` called. Every failure is one
`CheckpointError` whose message names the file and the problem. `torch.load` is never called.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from .config import DasgConfig
from .model import DasgMoEModel
from .tokenizer import load_tokenizer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
FLOAT_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message says why."""


@dataclass(frozen=True)
class Checkpoint:
    model: DasgMoEModel
    tokenizer: Tokenizer
    config: DasgConfig
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def _fsync(path: str) -> None:
    """Flush a written file to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file beside `path`, then rename it over `path`.

    `write(tmp)` fills the temporary file; a reader sees the old file or the new one, never
    a part, and a crash never leaves a half-written file behind. The temporary file gets the
    permissions `open()` would give `path` (0o666 less the umask), not `mkstemp`'s owner-only
    0o600, so checkpoints and reports stay readable by whoever may read their folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = os.stat(tmp).st_mode  # writers that recreate the file (safetensors) lose it
    try:
        write(tmp)
        os.chmod(tmp, mode)
        _fsync(tmp)  # the bytes reach the disk before the name does (power loss)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(model: DasgMoEModel, tokenizer: Tokenizer, path: str | Path,
                    metrics: dict[str, Any] | None = None, card: str | None = None,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write a checkpoint folder. Weights are cast to `dtype` (fp16 keeps samples small)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config = {"model_type": "dasg_moe", "architectures": ["DasgMoEModel"],
              "torch_dtype": FLOAT_DTYPES[dtype], **config}
    tensors = {name: t.detach().to("cpu", dtype).contiguous()
               for name, t in model.state_dict().items()}
    atomic_write(path / "config.json",
                  lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    atomic_write(path / "model.safetensors",
                  lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write(path / "tokenizer.json", lambda p: tokenizer.save(p))
    if metrics is not None:
        atomic_write(path / "metrics.json",
                      lambda p: Path(p).write_text(json.dumps(metrics, indent=2) + "\n"))
    if card is not None:
        atomic_write(path / "README.md", lambda p: Path(p).write_text(card))
    return path


def read_config(path: str | Path) -> DasgConfig:
    """Parse and validate `<path>/config.json`."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; a checkpoint folder needs config.json")
    try:
        return DasgConfig.from_json(file)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{file}: {err}") from None


def expected_tensors(config: DasgConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the config implies (model built on the meta device)."""
    with torch.device("meta"):
        model = DasgMoEModel(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _check_weights(file: Path, config: DasgConfig) -> dict[str, torch.Tensor]:
    expected = expected_tensors(config)
    try:
        with safe_open(str(file), framework="pt") as f:
            names = set(f.keys())
            missing = sorted(set(expected) - names)
            extra = sorted(names - set(expected))
            if missing or extra:
                raise CheckpointError(
                    f"{file}: weights do not match config.json"
                    + (f"; missing tensors: {', '.join(missing[:5])}"
                       + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
                       if missing else "")
                    + (f"; unexpected tensors: {', '.join(extra[:5])}"
                       + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
                       if extra else ""))
            tensors = {}
            for name in sorted(names):
                t = f.get_tensor(name)
                if tuple(t.shape) != expected[name]:
                    raise CheckpointError(f"{file}: tensor {name} has shape {tuple(t.shape)}, "
                                          f"config.json implies {expected[name]}")
                if t.dtype not in FLOAT_DTYPES:
                    raise CheckpointError(f"{file}: tensor {name} has dtype {t.dtype}; "
                                          f"expected one of {', '.join(FLOAT_DTYPES.values())}")
                if not torch.isfinite(t).all():
                    raise CheckpointError(f"{file}: tensor {name} contains NaN or Inf values")
                tensors[name] = t
    except SafetensorError as err:
        raise CheckpointError(f"{file}: not a readable safetensors file (corrupt or "
                              f"truncated?): {err}") from None
    except OSError as err:
        raise CheckpointError(f"{file}: cannot be read: {err}") from None
    return tensors


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and validate a checkpoint folder; the model is returned in eval mode."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder (no such directory)")
    weights = path / "model.safetensors"
    if not weights.is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{path}: found {', '.join(pickles)} but no model.safetensors. Pickle files "
                f"are refused: unpickling can run arbitrary code. Convert the weights to "
                f"safetensors (safetensors.torch.save_file) in an environment you trust.")
        raise CheckpointError(f"{weights}: missing; a checkpoint folder needs model.safetensors")
    config = read_config(path)
    tensors = _check_weights(weights, config)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"{tokenizer_file}: missing; a checkpoint needs its tokenizer")
    try:
        tokenizer = load_tokenizer(tokenizer_file)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(f"{tokenizer_file}: {tokenizer.get_vocab_size()} tokens but "
                              f"config.json has vocab_size {config.vocab_size}")
    metrics = {}
    metrics_file = path / "metrics.json"
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{metrics_file}: not valid JSON: {err}") from None
    model = DasgMoEModel(config)
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return Checkpoint(model.to(device).eval(), tokenizer, config, path, metrics)
