"""Specification of dasg_moe.data (DESIGN.md §5): GLUE tasks, local Parquet loading, metrics.

All loads read the real files in ../shared/data/glue (byte-identical to the Hub's); the Hub
path itself is not exercised here, since build and CI machines cannot reach it.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter

import pytest
import torch

from dasg_moe.data import (
    GLUE_TASKS,
    TaskSpec,
    batches,
    compute_metrics,
    get_task,
    load_glue,
    resolve_data_dir,
)
from dasg_moe.tokenizer import encode_batch

# --- task registry ---------------------------------------------------------------------


def test_supported_tasks_and_their_specs():
    assert set(GLUE_TASKS) == {"mrpc", "sst2", "rte", "cola"}
    mrpc = get_task("mrpc")
    assert mrpc == TaskSpec("mrpc", ("sentence1", "sentence2"),
                            ("not_equivalent", "equivalent"), ("accuracy", "f1"))
    assert mrpc.is_pair and mrpc.num_labels == 2
    assert get_task("cola").metrics == ("matthews", "accuracy")
    assert not get_task("SST2").is_pair  # case-insensitive


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        GLUE_TASKS["qnli"] = GLUE_TASKS["rte"]  # type: ignore[index]


def test_stsb_is_refused_as_regression_and_lists_supported():
    with pytest.raises(ValueError, match="regression") as info:
        get_task("stsb")
    assert "cola, mrpc, rte, sst2" in str(info.value)


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="not a known GLUE task"):
        get_task("squad")


# --- where data comes from ---------------------------------------------------------------


def test_resolve_data_dir_prefers_argument_then_env_then_hub(monkeypatch):
    monkeypatch.setenv("DASG_DATA_DIR", "/from/env")
    assert resolve_data_dir("/from/arg") == "/from/arg"
    assert resolve_data_dir(None) == "/from/env"
    monkeypatch.delenv("DASG_DATA_DIR")
    assert resolve_data_dir(None) is None


def test_mrpc_validation_has_408_rows_with_binary_labels(glue_dir):
    ds = load_glue("mrpc", "validation", data_dir=str(glue_dir))
    assert len(ds) == 408
    assert {"sentence1", "sentence2", "label"} <= set(ds.column_names)
    assert Counter(ds["label"]) == {0: 129, 1: 279}  # from the data README
    assert ds.features["label"].names == list(get_task("mrpc").label_names)


def test_env_var_selects_the_local_folder(glue_dir, monkeypatch):
    monkeypatch.setenv("DASG_DATA_DIR", str(glue_dir))
    ds = load_glue("sst2", "validation")
    assert len(ds) == 872 and ds.features["label"].names == ["negative", "positive"]


def test_missing_split_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_glue("rte", "train", data_dir=str(tmp_path))
    assert str(tmp_path / "rte" / "train.parquet") in str(info.value)


def test_wrong_files_under_a_task_folder_are_caught(glue_dir, tmp_path):
    (tmp_path / "mrpc").mkdir()
    shutil.copy(glue_dir / "sst2" / "validation.parquet", tmp_path / "mrpc" / "validation.parquet")
    with pytest.raises(ValueError, match="sentence1"):
        load_glue("mrpc", "validation", data_dir=str(tmp_path))


# --- metrics -----------------------------------------------------------------------------

# Hand count: TP=3 (rows 0, 3, 5), TN=1 (row 1), FN=1 (row 2), FP=1 (row 4).
LABELS = [1, 0, 1, 1, 0, 1]
PREDS = [1, 0, 0, 1, 1, 1]


def test_mrpc_metrics_match_hand_computation():
    m = compute_metrics("mrpc", LABELS, PREDS)
    assert set(m) == {"accuracy", "f1"}
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # 2TP / (2TP + FP + FN) = 0.75


def test_cola_matthews_matches_hand_computation():
    m = compute_metrics("cola", LABELS, torch.tensor(PREDS))
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3 - 1) / sqrt(4*4*2*2)
    assert m["matthews"] == pytest.approx((3 * 1 - 1 * 1) / math.sqrt(4 * 4 * 2 * 2))
    assert list(m) == ["matthews", "accuracy"] and isinstance(m["accuracy"], float)


def test_sst2_and_rte_report_accuracy_only():
    assert compute_metrics("sst2", LABELS, PREDS) == {"accuracy": pytest.approx(4 / 6)}
    assert set(compute_metrics("rte", LABELS, PREDS)) == {"accuracy"}


def test_metrics_reject_bad_inputs():
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics("mrpc", [0, 1], [0])
    with pytest.raises(ValueError, match="hidden test labels"):
        compute_metrics("sst2", [-1, -1], [0, 1])
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics("sst2", [], [])


# --- batches -----------------------------------------------------------------------------


def test_batches_cover_the_split_in_order(glue_dir, small_tokenizer):
    ds = load_glue("mrpc", "validation", data_dir=str(glue_dir))
    out = list(batches(ds, small_tokenizer, "mrpc", batch_size=64, max_len=48))
    assert [len(b["labels"]) for b in out] == [64] * 6 + [24]
    assert torch.cat([b["labels"] for b in out]).tolist() == list(ds["label"])
    first = out[0]
    assert set(first) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert first["input_ids"].shape == first["attention_mask"].shape
    assert first["input_ids"].shape[1] <= 48 and first["labels"].dtype == torch.long
    assert (first["token_type_ids"] == 1).any()  # sentence pairs
    # Same tensors as encoding the rows directly.
    rows = ds[:64]
    direct = encode_batch(small_tokenizer, rows["sentence1"], rows["sentence2"], max_len=48)
    assert torch.equal(direct["input_ids"], first["input_ids"])


def test_shuffle_is_a_seeded_permutation(glue_dir, small_tokenizer):
    ds = load_glue("sst2", "validation", data_dir=str(glue_dir))

    def labels(seed):
        run = batches(ds, small_tokenizer, "sst2", 100, 32, shuffle=True, seed=seed)
        return torch.cat([b["labels"] for b in run]).tolist()

    assert labels(1) == labels(1)
    assert labels(1) != labels(2) != list(ds["label"])
    assert sorted(labels(1)) == sorted(ds["label"])


def test_single_sentence_task_has_one_segment(glue_dir, small_tokenizer):
    ds = load_glue("cola", "validation", data_dir=str(glue_dir))
    first = next(batches(ds, small_tokenizer, "cola", 16, 32))
    assert (first["token_type_ids"] == 0).all() and first["input_ids"].shape[0] == 16
