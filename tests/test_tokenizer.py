"""Specification of dasg_moe.tokenizer (DESIGN.md §4, §5): what the app and trainer rely on.

Every behaviour is checked on a tokenizer we train (ids 0..4 for the specials) and, where it
matters, on the BERT tokenizer of all-MiniLM-L6-v2 (specials at 0 and 100..103, truncation
and fixed padding stored in its file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from dasg_moe.tokenizer import (
    SPECIAL_TOKENS,
    canonical_vocab,
    configured_tokenizer,
    encode,
    encode_batch,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
)

ROOT = Path(__file__).resolve().parents[1]

LONG_TEXT = " ".join(["the company said shares rose in trading on monday"] * 30)


@pytest.fixture(params=["small", "minilm"])
def any_tokenizer(request, small_tokenizer, minilm_tokenizer):
    """Both tokenizer flavours, so each spec below holds for either."""
    return small_tokenizer if request.param == "small" else minilm_tokenizer


# --- special tokens ---------------------------------------------------------------------


def test_trained_tokenizer_puts_specials_at_0_to_4(small_tokenizer):
    assert [small_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert special_token_ids(small_tokenizer) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3,
                                                  "mask": 4}
    assert small_tokenizer.get_vocab_size() <= 500


def test_special_ids_are_looked_up_by_string_for_bert_vocab(minilm_tokenizer):
    assert special_token_ids(minilm_tokenizer) == {"pad": 0, "unk": 100, "cls": 101, "sep": 102,
                                                   "mask": 103}


# --- reproducible training ----------------------------------------------------------------

# Trains on the first 300 MRPC pairs with the default vocab_size (8192, more than 600 sentences
# fill, so merging runs down to min_frequency); prints the tokenizer.json text.
_TRAIN_ONCE = """
import sys
import pyarrow.parquet as pq
from dasg_moe.tokenizer import train_tokenizer
rows = pq.read_table(sys.argv[1], columns=["sentence1", "sentence2"]).slice(0, 300).to_pydict()
sys.stdout.write(train_tokenizer(rows["sentence1"] + rows["sentence2"]).to_str())
"""


def test_training_gives_the_same_tokenizer_in_every_process(glue_dir):
    # Without the fix this fails on both counts: the pieces get other ids in each process,
    # and equally frequent merges are taken in another order, so even the set of pieces
    # (and its size) changes.
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_ONCE,
                               str(glue_dir / "mrpc" / "train.parquet")],
                              cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in ("1", "2")]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        outputs.append(stdout)
    first, second = (json.loads(out)["model"]["vocab"] for out in outputs)
    assert sorted(first) == sorted(second), "the two runs learned different pieces"
    moved = sum(first[t] != second[t] for t in first)
    assert first == second, f"{moved} of {len(first)} pieces got other ids"
    assert outputs[0] == outputs[1]


def test_trained_vocab_is_in_the_documented_order(small_tokenizer):
    vocab = small_tokenizer.get_vocab()
    assert vocab == canonical_vocab(vocab)
    by_id = sorted(vocab, key=vocab.get)
    assert by_id[:5] == list(SPECIAL_TOKENS)
    # Single characters, then "##" + one character, then longer pieces, each by code point.
    kinds = [(len(t.removeprefix("##")) > 1, t.startswith("##")) for t in by_id[5:]]
    assert kinds == sorted(kinds) and kinds[0] == (False, False) and kinds[-1] == (True, True)
    single = [t for t in by_id[5:] if len(t) == 1]
    assert single == sorted(single)


def test_canonical_vocab_depends_only_on_the_pieces():
    pieces = ["##ing", "play", "[MASK]", "a", "##s", "[PAD]", "p", "[CLS]", "pl", "[SEP]",
              "[UNK]", "##a", "##g"]
    expected = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "p", "##a", "##g", "##s",
                "pl", "play", "##ing"]
    assert list(canonical_vocab(pieces)) == expected
    assert canonical_vocab(reversed(pieces)) == canonical_vocab(pieces)
    assert list(canonical_vocab(pieces).values()) == list(range(len(expected)))


def test_only_the_five_special_tokens_are_special(small_tokenizer):
    # Training registers the "##" + character pieces with the trainer as special tokens to
    # fix their ids; they must not stay special (matched in raw text, skipped in decoding).
    added = small_tokenizer.get_added_tokens_decoder()
    assert [added[i].content for i in sorted(added)] == list(SPECIAL_TOKENS)
    assert all(added[i].special for i in added)
    # As a special token "##s" would be cut out of the raw text whole; as a piece it only
    # continues a word, and "#" is punctuation, which always stands alone.
    assert "##s" not in encode(small_tokenizer, "##s play##s").tokens
    cats = encode(small_tokenizer, "cats")
    assert any(t.startswith("##") for t in cats.tokens)
    assert small_tokenizer.decode(cats.input_ids) == "cats"  # no piece skipped as special


# --- layout of single texts and pairs ----------------------------------------------------


def test_pair_encodes_as_cls_a_sep_b_sep_with_segment_ids(any_tokenizer):
    enc = encode(any_tokenizer, "The cat sat.", "A dog ran.")
    ids = special_token_ids(any_tokenizer)
    sep = [i for i, t in enumerate(enc.tokens) if t == "[SEP]"]
    assert enc.tokens[0] == "[CLS]" and enc.input_ids[0] == ids["cls"]
    assert len(sep) == 2 and sep[1] == len(enc.tokens) - 1
    # [CLS] + sentence 1 + first [SEP] are type 0; sentence 2 + last [SEP] are type 1.
    assert enc.token_type_ids == [0] * (sep[0] + 1) + [1] * (sep[1] - sep[0])
    assert enc.segment == [-1] + [0] * (sep[0] - 1) + [-1] + [1] * (sep[1] - sep[0] - 1) + [-1]
    assert enc.special == [s == -1 for s in enc.segment]
    assert enc.attention_mask == [1] * len(enc.tokens)
    assert enc.offsets[0] == enc.offsets[sep[0]] == enc.offsets[-1] == (0, 0)


def test_single_text_is_cls_text_sep(small_tokenizer):
    enc = encode(small_tokenizer, "The cat sat.")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert set(enc.token_type_ids) == {0}
    assert enc.segment[1:-1] == [0] * (len(enc.tokens) - 2)
    assert not enc.truncated and enc.n_tokens_before_truncation == len(enc.tokens)


def test_offsets_point_into_the_original_text_of_each_segment(any_tokenizer):
    text = "Shares of Microsoft ROSE sharply, analysts said."
    pair = "Naïve investors bought the stock on Tuesday."
    enc = encode(any_tokenizer, text, pair)
    checked = 0
    for tok, (start, end), seg in zip(enc.tokens, enc.offsets, enc.segment, strict=True):
        if seg == -1 or tok == "[UNK]":
            continue
        source = text if seg == 0 else pair
        piece = source[start:end].lower().replace("ï", "i")  # normaliser strips accents
        assert piece == tok.removeprefix("##"), (tok, start, end)
        checked += 1
    assert checked >= 12


def test_decode_round_trips_ordinary_text(small_tokenizer):
    enc = encode(small_tokenizer, "The company said on Monday")
    decoded = small_tokenizer.decode(enc.input_ids)
    assert decoded == "the company said on monday"


# --- truncation ------------------------------------------------------------------------


def test_long_text_is_truncated_and_flagged(any_tokenizer):
    enc = encode(any_tokenizer, LONG_TEXT, max_len=16)
    assert len(enc.input_ids) == 16 and enc.tokens[-1] == "[SEP]"
    assert enc.truncated
    assert enc.n_tokens_before_truncation > 16
    assert all(len(getattr(enc, f)) == 16 for f in ("tokens", "offsets", "segment", "special"))


def test_text_of_exactly_max_len_is_not_truncated(small_tokenizer):
    n = len(encode(small_tokenizer, "the company said on monday").input_ids)
    enc = encode(small_tokenizer, "the company said on monday", max_len=n)
    assert not enc.truncated and enc.n_tokens_before_truncation == n


def test_pair_truncation_is_longest_first_and_keeps_both_sentences(small_tokenizer):
    enc = encode(small_tokenizer, LONG_TEXT, "short one", max_len=20)
    assert len(enc.input_ids) == 20 and enc.truncated
    assert enc.tokens.count("[SEP]") == 2 and enc.tokens[-1] == "[SEP]"
    # The long first sentence is cut; the short second survives whole.
    second = [t for t, s in zip(enc.tokens, enc.segment, strict=True) if s == 1]
    assert small_tokenizer.decode([small_tokenizer.token_to_id(t) for t in second]) == "short one"


def test_stored_truncation_of_a_tokenizer_file_is_ignored(minilm_tokenizer):
    # MiniLM's tokenizer.json truncates at 128 and pads to 128; encode must use max_len only.
    enc = encode(minilm_tokenizer, LONG_TEXT, max_len=512)
    assert 128 < len(enc.input_ids) <= 512 and not enc.truncated
    assert "[PAD]" not in enc.tokens


def test_max_len_too_small_for_specials_is_an_error(small_tokenizer):
    with pytest.raises(ValueError, match="max_len"):
        encode(small_tokenizer, "hello world", max_len=2)
    with pytest.raises(ValueError, match="max_len"):
        encode(small_tokenizer, "hello", "world", max_len=4)


# --- bad and hostile input ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "   ", "\n\t  \r\n"])
def test_empty_text_raises(small_tokenizer, bad):
    with pytest.raises(ValueError, match="empty"):
        encode(small_tokenizer, bad)
    with pytest.raises(ValueError, match="empty"):
        encode(small_tokenizer, "fine", bad)
    with pytest.raises(ValueError, match="empty"):
        encode_batch(small_tokenizer, ["fine", bad])


HOSTILE = {
    "control": "abc\x00\x07\x1b[31mdef\x7f",
    "only_control": "\x00\x01\x02",
    "rtl_arabic": "مرحبا بالعالم",
    "rtl_hebrew_mixed": "שלום world עולם",
    "bidi_override": "\u202eevil\u202c text",
    "emoji": "I 😀 love 🇫🇷 and 👨‍👩‍👧",
    "combining": "e\u0301te\u0301 Zalgo z\u0335\u0321a\u0336l\u0337g\u0338o",
    "punctuation": "!?!?...;;;---",
    "zero_width": "zero\u200bwidth\ufeffjoin",
    "cjk": "東京は大きい",
    "lone_surrogate": "bad \ud800 surrogate",
    "very_long_word": "a" * 500,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_unicode_does_not_crash(any_tokenizer, name):
    text = HOSTILE[name]
    enc = encode(any_tokenizer, text, text, max_len=64)
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert all(0 <= s <= e <= len(text) for s, e in enc.offsets)
    batch = encode_batch(any_tokenizer, [text], [text], max_len=64)
    assert batch["input_ids"][0].tolist() == enc.input_ids


# --- batch encoding ----------------------------------------------------------------------


def test_encode_batch_pads_to_longest_and_matches_encode(any_tokenizer):
    texts = ["short", "a somewhat longer sentence about shares", LONG_TEXT]
    pairs = ["yes", "no", "maybe so"]
    out = encode_batch(any_tokenizer, texts, pairs, max_len=32)
    singles = [encode(any_tokenizer, t, p, max_len=32) for t, p in zip(texts, pairs, strict=True)]
    longest = max(len(s.input_ids) for s in singles)
    pad = special_token_ids(any_tokenizer)["pad"]
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask"}
    for name, tensor in out.items():
        assert tensor.shape == (3, longest) and tensor.dtype == torch.long, name
    for row, single in enumerate(singles):
        n = len(single.input_ids)
        assert out["input_ids"][row, :n].tolist() == single.input_ids
        assert out["token_type_ids"][row, :n].tolist() == single.token_type_ids
        assert out["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert set(out["input_ids"][row, n:].tolist()) <= {pad}


def test_encode_batch_rejects_mismatched_pairs(small_tokenizer):
    with pytest.raises(ValueError, match="2 texts but 1 text_pairs"):
        encode_batch(small_tokenizer, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="at least one"):
        encode_batch(small_tokenizer, [])


# --- the caller's tokenizer is never mutated -------------------------------------------------


def test_callers_tokenizer_settings_are_untouched(minilm_tokenizer):
    before = (minilm_tokenizer.truncation, minilm_tokenizer.padding)
    encode(minilm_tokenizer, LONG_TEXT, max_len=300)
    encode_batch(minilm_tokenizer, ["a", LONG_TEXT], max_len=64)
    assert (minilm_tokenizer.truncation, minilm_tokenizer.padding) == before


def test_configured_tokenizer_reuses_an_already_configured_one(small_tokenizer):
    ready = configured_tokenizer(small_tokenizer, 32, pad=True)
    assert ready is not small_tokenizer and small_tokenizer.truncation is None
    assert configured_tokenizer(ready, 32, pad=True) is ready
    assert configured_tokenizer(small_tokenizer, None) is small_tokenizer


def test_concurrent_encodes_with_different_limits_agree_with_serial(small_tokenizer):
    jobs = [(LONG_TEXT, n) for n in (8, 16, 32, 64)] * 8
    serial = [encode(small_tokenizer, t, max_len=n).input_ids for t, n in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda j: encode(small_tokenizer, j[0], max_len=j[1]).input_ids,
                                 jobs))
    assert threaded == serial


# --- save / load -----------------------------------------------------------------------------


def test_save_then_load_gives_the_same_encoding(small_tokenizer, tmp_path):
    path = tmp_path / "ckpt" / "tokenizer.json"
    save_tokenizer(small_tokenizer, path)
    again = load_tokenizer(path)
    text, pair = "Shares rose on Monday.", "The stock fell."
    assert encode(again, text, pair) == encode(small_tokenizer, text, pair)


def test_load_missing_file_names_it(tmp_path):
    path = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(ValueError, match="not found") as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["{not json", '{"version": "1.0"}', ""])
def test_load_corrupt_file_names_it(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="could not read tokenizer file") as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


def test_loads_the_minilm_tokenizer_file(minilm_tokenizer_path):
    tok = load_tokenizer(minilm_tokenizer_path)
    enc = encode(tok, "Hello world")
    assert enc.tokens == ["[CLS]", "hello", "world", "[SEP]"]
    assert enc.input_ids[0] == 101 and enc.input_ids[-1] == 102
