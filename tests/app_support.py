"""Checkpoints for the app tests (test_app, test_figures, test_browser).

`tiny_checkpoint_root`: four untrained tiny checkpoints (routers dasg, switch with dense
layers in between, da_moe, mh_moe; d_model 32, two layers, window 4 so the attention window
shows) sharing one WordPiece tokenizer trained on 600 MRPC sentences. Built once per test
process (about a second) in a temporary folder.

`app_checkpoint_root`: the shipped `sample_checkpoints/` when it holds at least two
checkpoint folders, else the tiny ones, so the app is tested on the real samples wherever
they exist.

Imported by the test modules (`from app_support import ...`) rather than added to the shared
conftest.py; the build is memoised, so several modules share one set of folders.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from dasg_moe import DasgConfig, DasgMoEModel, save_checkpoint
from dasg_moe.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"
SAMPLES = ROOT / "sample_checkpoints"
TINY = {  # name -> config overrides
    "mrpc-tiny-dasg": {"router": "dasg"},
    "mrpc-tiny-switch": {"router": "switch", "moe_every": 2},
    "mrpc-tiny-damoe": {"router": "da_moe", "k_max": 3},
    "mrpc-tiny-mhmoe": {"router": "mh_moe", "mh_heads": 2},
}


@functools.cache
def build_tiny_checkpoints() -> Path:
    """The tiny checkpoints (see the module docstring); returns their root folder."""
    root = Path(tempfile.mkdtemp(prefix="dasg-app-ckpts-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rows = pq.read_table(GLUE_DIR / "mrpc" / "train.parquet",
                         columns=["sentence1", "sentence2"]).slice(0, 300).to_pydict()
    tokenizer = train_tokenizer(rows["sentence1"] + rows["sentence2"], vocab_size=800)
    for i, (name, overrides) in enumerate(TINY.items()):
        torch.manual_seed(i)
        cfg = DasgConfig(vocab_size=tokenizer.get_vocab_size(), max_len=64, d_model=32,
                         n_layers=2, n_heads=2, n_groups=8, window=4, group_mlp_dim=8,
                         n_shallow=4, n_deep=4, d_ff=32, d_ff_deep=16, dropout=0.0,
                         task="mrpc", num_labels=2,
                         id2label={0: "not_equivalent", 1: "equivalent"}, **overrides)
        save_checkpoint(DasgMoEModel(cfg).eval(), tokenizer, root / name,
                        metrics={"note": "untrained test model"}, card=f"# {name}\n")
    return root


def sample_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) \
        if root.is_dir() else []


@pytest.fixture(scope="session")
def tiny_checkpoint_root() -> Path:
    return build_tiny_checkpoints()


@pytest.fixture(scope="session")
def app_checkpoint_root() -> Path:
    """The real sample checkpoints when there are at least two, else the tiny ones."""
    return SAMPLES if len(sample_names(SAMPLES)) >= 2 else build_tiny_checkpoints()


def router_of(folder: Path) -> str:
    return DasgConfig.from_json(folder / "config.json").router
