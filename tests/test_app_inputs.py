"""What the app accepts from outside (app/inputs.py): thresholds, text, where checkpoints and
data are found. Each refusal must say why. The uploads (checkpoint .zip, dataset CSV/TSV)
are specified in test_uploads.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from app_support import tiny_checkpoint_root  # noqa: F401

from app import inputs

CHECKPOINT = "mrpc-tiny-dasg"


def test_thresholds_and_text_checks():
    assert inputs.parse_threshold("0.25", "theta_s") == 0.25
    for bad in ("abc", "1.5", "-0.1", "nan"):
        with pytest.raises(inputs.InputError, match="theta_s"):
            inputs.parse_threshold(bad, "theta_s")
    inputs.check_thresholds(0.3, 0.3)
    with pytest.raises(inputs.InputError, match="must not exceed"):
        inputs.check_thresholds(0.8, 0.2)
    with pytest.raises(inputs.InputError, match="empty"):
        inputs.check_text(" \n\t")


def test_checkpoint_listing_follows_the_environment(tiny_checkpoint_root, monkeypatch,  # noqa: F811
                                                    tmp_path):
    monkeypatch.setenv(inputs.CHECKPOINT_DIR_ENV, str(tiny_checkpoint_root))
    assert CHECKPOINT in inputs.list_checkpoints()
    (tmp_path / "not-a-checkpoint").mkdir()
    assert inputs.list_checkpoints(tmp_path) == []
    assert inputs.list_checkpoints(tmp_path / "missing") == []
    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint_root / CHECKPOINT, folder)
    stamp = inputs.fingerprint(folder)
    (folder / "README.md").write_text("changed card\n")
    assert inputs.fingerprint(folder) != stamp


def test_glue_sample_is_the_first_rows(monkeypatch):
    monkeypatch.setenv("DASG_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" /
                                            "data" / "glue"))
    data = inputs.glue_examples("mrpc", 5)
    assert len(data) == 5 and data["idx"][:2] == [9, 18]
    monkeypatch.setenv("DASG_DATA_DIR", "/nonexistent")
    with pytest.raises(inputs.InputError, match="No local GLUE data"):
        inputs.glue_examples("mrpc", 5)
