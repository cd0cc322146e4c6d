"""Nothing lost: an interrupted threshold sweep resumes from its cache, and every export is
written whole or not at all (analysis/sweep.py, analysis/cache.py, analysis/report.py,
dasg_moe/checkpoint.py).

The sweep runs the shipped `mrpc-dasg-small` checkpoint on the first 24 MRPC validation
pairs, 6 threshold pairs of 3 batches each. It is interrupted the way Ctrl+C interrupts it:
a KeyboardInterrupt raised inside a forward pass (a forward pre-hook on the real model
counts the passes and raises at the chosen one). The rerun must run only the pairs that
were not finished and give, exactly, the table of a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.cache import checkpoint_cache_dir, write_json, write_parquet
from analysis.cli import load_examples
from analysis.report import Report
from analysis.sweep import parse_grid, sweep_thresholds
from dasg_moe import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_checkpoints" / "mrpc-dasg-small"
GLUE = ROOT.parent / "shared" / "data" / "glue"
PAIRS = parse_grid("0.1,0.3:0.5,0.7,0.9")  # 6 pairs
N_EXAMPLES, BATCH = 24, 8
PER_PAIR = N_EXAMPLES // BATCH  # forward passes per pair


@pytest.fixture(scope="module")
def ckpt():
    return load_checkpoint(SAMPLE)


@pytest.fixture(scope="module")
def dataset():
    return load_examples("mrpc", "validation", str(GLUE), N_EXAMPLES)


class Forwards:
    """Counts the model's forward passes; raises KeyboardInterrupt at pass `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.count = 0
        self.stop_at = stop_at

    def __call__(self, module, args) -> None:
        self.count += 1
        if self.count == self.stop_at:
            raise KeyboardInterrupt


@contextlib.contextmanager
def counting(model: torch.nn.Module, stop_at: int | None = None):
    forwards = Forwards(stop_at)
    handle = model.register_forward_pre_hook(forwards)
    try:
        yield forwards
    finally:
        handle.remove()


def sweep(ckpt, dataset, cache_dir, pairs=PAIRS) -> pd.DataFrame:
    return sweep_thresholds(ckpt.model, ckpt.tokenizer, "mrpc", dataset, pairs,
                            batch_size=BATCH, progress=False, cache_dir=cache_dir)


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_an_interrupted_sweep_resumes_where_it_stopped(ckpt, dataset, tmp_path):
    with counting(ckpt.model) as forwards:
        uninterrupted = sweep(ckpt, dataset, cache_dir=None)
    assert forwards.count == len(PAIRS) * PER_PAIR

    cache_dir = checkpoint_cache_dir(SAMPLE, tmp_path)  # as `python -m analysis sweep` does
    done = 2
    with counting(ckpt.model, stop_at=done * PER_PAIR + 2), pytest.raises(KeyboardInterrupt):
        sweep(ckpt, dataset, cache_dir)  # stopped in the middle of the third pair
    (folder,) = cache_dir.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [  # whole files only, no temporaries
        "ts0.100-td0.500.parquet", "ts0.100-td0.700.parquet"]
    before = stamps(folder)

    with counting(ckpt.model) as forwards:
        resumed = sweep(ckpt, dataset, cache_dir)
    assert forwards.count == (len(PAIRS) - done) * PER_PAIR  # only the missing pairs
    pd.testing.assert_frame_equal(resumed, uninterrupted, check_exact=True)
    after = stamps(folder)
    assert len(after) == len(PAIRS)
    assert {name: after[name] for name in before} == before  # finished pairs left alone

    with counting(ckpt.model) as forwards:  # all cached: no forward pass at all
        again = sweep(ckpt, dataset, cache_dir)
    assert forwards.count == 0
    pd.testing.assert_frame_equal(again, uninterrupted, check_exact=True)

    with counting(ckpt.model) as forwards:  # a wider grid measures only the new pair
        wider = sweep(ckpt, dataset, cache_dir, [*PAIRS, (0.2, 0.8)])
    assert forwards.count == PER_PAIR and len(wider) == len(PAIRS) + 1


def test_a_damaged_cache_file_is_measured_again(ckpt, dataset, tmp_path):
    reference = sweep(ckpt, dataset, tmp_path)
    (folder,) = tmp_path.iterdir()
    damaged = folder / "ts0.300-td0.700.parquet"
    damaged.write_bytes(damaged.read_bytes()[:100])  # cut short by a copy, say
    (folder / ".ts0.300-td0.900.parquet.0123456789ab.tmp").write_bytes(b"PAR1")  # a leftover
    with counting(ckpt.model) as forwards:
        table = sweep(ckpt, dataset, tmp_path)
    assert forwards.count == PER_PAIR
    pd.testing.assert_frame_equal(table, reference, check_exact=True)
    assert len(pd.read_parquet(damaged)) == N_EXAMPLES  # replaced by a whole file


class Unprintable:
    """A table cell whose text cannot be produced: `to_csv` fails half-way through."""

    def __str__(self) -> str:
        raise RuntimeError("disk full")


def test_a_failed_report_write_keeps_the_previous_report_whole(tmp_path):
    first = Report(tmp_path, "First")
    first.table("sweep", pd.DataFrame({"a": range(1000)}))
    first.write()
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    second = Report(tmp_path, "Second")
    second.table("sweep", pd.DataFrame({"a": [*range(999), Unprintable()]}))
    with pytest.raises(RuntimeError, match="disk full"):
        second.write()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


def test_exports_are_whole_files_readable_by_others(tmp_path, small_tokenizer):
    """Reports, cache files and checkpoints: no temporary file left beside them, and the
    permissions a plain `open()` gives (not the owner-only mode of a temporary file)."""
    import plotly.graph_objects as go

    from dasg_moe import DasgConfig, DasgMoEModel

    report = Report(tmp_path / "report", "Permissions")
    report.table("t", pd.DataFrame({"a": [1, 2]}))
    report.figure("f", go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), "a figure")
    report.write()
    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "cache" / "a.parquet")
    write_json({"a": 1}, tmp_path / "cache" / "a.json")
    cfg = DasgConfig(vocab_size=small_tokenizer.get_vocab_size(), max_len=32, d_model=32,
                     n_layers=1, n_heads=2, n_groups=2, window=4, group_mlp_dim=8,
                     n_shallow=2, n_deep=2, d_ff=32, d_ff_deep=16)
    save_checkpoint(DasgMoEModel(cfg), small_tokenizer, tmp_path / "ckpt",
                    metrics={"accuracy": 0.5}, card="# card\n")
    umask = os.umask(0o022)
    os.umask(umask)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"report.md", "t.csv", "f.html", "plotly.min.js",
                                       "a.parquet", "a.json", "config.json",
                                       "model.safetensors", "tokenizer.json", "metrics.json",
                                       "README.md"}
    assert not [p for p in files if p.name.startswith(".")]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    assert 'src="plotly.min.js"' in (tmp_path / "report" / "f.html").read_text()
