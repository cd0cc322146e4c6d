"""analysis.tokens: whole words, token kinds, training-data frequency."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from trace_frames import make_frame, sentence_rows

from analysis.tokens import (
    FREQUENCY_BUCKETS,
    add_frequency,
    annotate_tokens,
    frequency_bucket,
    training_token_counts,
    word_table,
)


def test_words_pieces_and_kinds():
    tokens = ["[CLS]", "the", "play", "##ing", "dog", "'", "s", "...", "[SEP]"]
    frame = make_frame(sentence_rows(tokens) + sentence_rows(tokens, layer=1))
    words = word_table(frame)
    assert len(words) == len(tokens)  # one row per position, whatever the layer count
    assert words["word_text"].tolist() == ["[cls]", "the", "playing", "playing", "dog", "'",
                                           "s", "...", "[sep]"]
    assert words["piece"].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert words["word"].tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 7]
    assert words["kind"].tolist() == ["special", "stopword", "content", "subword", "content",
                                      "punctuation", "stopword", "punctuation", "special"]


def test_words_restart_in_every_example_and_annotate_keeps_rows():
    frame = make_frame(sentence_rows(["a", "##b"], example=0)
                       + sentence_rows(["##c", "d"], example=1))  # "##c" opens example 1
    out = annotate_tokens(frame)
    assert len(out) == len(frame)
    assert out["word"].tolist() == [0, 0, 0, 1]
    assert out["word_text"].tolist() == ["ab", "ab", "c", "d"]
    assert out.attrs["expert_labels"] == frame.attrs["expert_labels"]
    assert annotate_tokens(out) is out  # idempotent


def test_frequency_buckets_at_their_edges():
    counts = np.array([0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 10 ** 6])
    labels = [b for _, b in FREQUENCY_BUCKETS]
    expected = [labels[i] for i in (0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5)]
    assert list(frequency_bucket(counts)) == expected


def test_training_counts_and_add_frequency(small_tokenizer):
    ds = datasets.Dataset.from_dict({"sentence1": ["the cat", "the dog"],
                                     "sentence2": ["the end", "a cat"], "label": [0, 1]})
    counts = training_token_counts(small_tokenizer, "mrpc", dataset=ds)
    the = small_tokenizer.token_to_id("the")
    assert counts[the] == 3
    assert small_tokenizer.token_to_id("[CLS]") not in counts.index  # no special tokens
    frame = make_frame([{"token": "the", "token_id": the, "position": 1},
                        {"token": "[CLS]", "token_id": 2, "position": 0},
                        {"token": "zzz", "token_id": 499, "position": 2}])
    out = add_frequency(frame, counts)
    assert out["train_count"].tolist()[0] == 3
    assert np.isnan(out["train_count"].tolist()[1])  # special tokens have no frequency
    assert out["frequency"].tolist()[0] == "1-9"
    assert out["frequency"].tolist()[2] == "unseen"


def test_training_counts_cache_round_trip(small_tokenizer, tmp_path):
    ds = datasets.Dataset.from_dict({"sentence1": ["the cat"], "sentence2": ["the"],
                                     "label": [0]})
    file = tmp_path / "counts.parquet"
    first = training_token_counts(small_tokenizer, "mrpc", dataset=ds, cache_file=file)
    assert file.is_file()
    again = training_token_counts(small_tokenizer, "mrpc", dataset=None, cache_file=file)
    assert again.to_dict() == first.to_dict()


def test_word_table_needs_token_strings():
    frame = make_frame([{"token": "a"}]).drop(columns="token")
    with pytest.raises(ValueError, match="token"):
        word_table(frame)
