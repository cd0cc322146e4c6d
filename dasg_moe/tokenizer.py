"""WordPiece tokenizer: train, save/load, and encode text for the model (DESIGN.md §4, §5).

A checkpoint ships its `tokenizer.json` (DESIGN.md §4), written by `save_tokenizer` and read
back by `load_tokenizer`. The same functions also accept a BERT-family `tokenizer.json`
such as all-MiniLM-L6-v2's, whose special tokens have other ids ([PAD]=0, [UNK]=100,
[CLS]=101, ...). For that reason ids are always looked up by token string
(`special_token_ids`) and never hard-coded.

`encode` produces what the routing trace needs to show a token to a reader: its text,
character offsets into the original sentence, which sentence of a pair it came from, and
whether the input was truncated. `encode_batch` produces padded tensors for training.

Thread safety: the app shares one cached `Tokenizer` between Streamlit sessions, so nothing
here calls `enable_truncation` / `enable_padding` on a tokenizer the caller passed in (those
mutate the shared object). When other settings are needed, we configure a private copy
(`configured_tokenizer`).

Shape legend: B batch, L tokens per sequence (after padding to the longest in the batch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Encoding, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from tokenizers.trainers import WordPieceTrainer

# Ids 0..4, in this order, for tokenizers trained by `train_tokenizer`.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Short names used by the rest of the package -> token strings.
_SPECIAL_NAMES = (("pad", "[PAD]"), ("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"),
                  ("mask", "[MASK]"))

# Unpaired UTF-16 surrogates are legal in a Python str but not in UTF-8; the Rust side
# rejects them with an opaque TypeError, so we replace each with U+FFFD (one character for
# one, which keeps every character offset valid).
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class EncodedText:
    """One encoded text (or sentence pair), with what the app needs to display each token.

    All lists have one entry per token, special tokens included, no padding.
    """

    input_ids: list[int]
    token_type_ids: list[int]      # 0 for [CLS] + sentence 1 + its [SEP], 1 for sentence 2 + [SEP]
    attention_mask: list[int]      # all ones (no padding in a single encoding)
    tokens: list[str]              # WordPiece strings, e.g. "play", "##ing", "[CLS]"
    offsets: list[tuple[int, int]] # character span in the ORIGINAL text of the token's segment
    segment: list[int]             # 0 sentence 1, 1 sentence 2, -1 special token
    special: list[bool]            # True for tokens added by the post-processor ([CLS], [SEP])
    truncated: bool                # the input had more than max_len tokens and was cut
    n_tokens_before_truncation: int


# ---------------------------------------------------------------------------------------
# Training and I/O
# ---------------------------------------------------------------------------------------


def _bert_template(cls_id: int, sep_id: int) -> TemplateProcessing:
    """[CLS] A [SEP] (type 0) and [CLS] A [SEP] B [SEP] (A type 0, B type 1), BERT layout."""
    return TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def _new_tokenizer(vocab: dict[str, int] | None = None) -> Tokenizer:
    """A WordPiece tokenizer, untrained (vocab None) or on `vocab`, with our normaliser,
    pre-tokenizer and decoder; special tokens and post-processor are the caller's."""
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]",
                                     continuing_subword_prefix="##"))
    # BertNormalizer: drops control characters, splits CJK ideographs, lowercases and
    # (because strip_accents follows lowercase) strips accents.
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _wordpiece_trainer(vocab_size: int, min_frequency: int,
                       seeds: Sequence[str] = ()) -> WordPieceTrainer:
    return WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *seeds],
        continuing_subword_prefix="##",
        show_progress=False,
    )


def _vocab_order(token: str) -> tuple[bool, bool, str]:
    """Sort key of the learned pieces: single characters, then "##" + one character, then
    longer word-initial pieces, then longer "##" pieces; by code point within each group."""
    body = token.removeprefix("##")
    return len(body) > 1, token.startswith("##"), token


def canonical_vocab(vocab: Iterable[str]) -> dict[str, int]:
    """token -> id for a WordPiece vocabulary in our fixed order: `SPECIAL_TOKENS` at
    0..4, then the other pieces sorted by `_vocab_order`. The ids thus depend only on which
    pieces were learned, never on the order the trainer happened to number them in."""
    rest = sorted(set(vocab) - set(SPECIAL_TOKENS), key=_vocab_order)
    return {token: i for i, token in enumerate([*SPECIAL_TOKENS, *rest])}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192,
                    min_frequency: int = 2) -> Tokenizer:
    """Train a lowercasing WordPiece tokenizer (BERT-style) on `texts`.

    The special tokens get ids 0..4 in `SPECIAL_TOKENS` order; pair inputs come out with
    segment ids in `Encoding.type_ids`. No truncation or padding is stored in the result:
    those are per-call choices (see `encode`, `encode_batch`).

    Reproducible: the same texts and settings give the same `tokenizer.json` in every
    process. The `tokenizers` trainer alone does not: it numbers the "##" + character
    pieces in the order it meets them while walking a randomly seeded hash map of the
    words, and it breaks ties between equally frequent merges by those numbers, so both
    which pieces are learned (where ties decide) and their ids varied from run to run.
    Hence two steps:
      1. A first pass (the trainer with no merges, about as costly as reading the texts)
         finds every "##" + character piece; the real pass gets them, sorted, as extra
         special tokens, which fixes their ids inside the trainer and with them every tie.
         They are ordinary pieces of the result, not special tokens.
      2. The learned vocabulary is renumbered in the fixed order of `canonical_vocab`.
    The seeds change nothing but the trainer's tie-breaking; the renumbering changes only
    ids, never how a text is split into pieces. Cost: the first pass adds about 80% to
    the training time (MRPC: 0.4 s -> 0.8 s of CPU).
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, "
                         f"got {vocab_size}")
    texts = texts if isinstance(texts, Sequence) else list(texts)  # read twice below
    probe = _new_tokenizer()
    probe.train_from_iterator(texts, trainer=_wordpiece_trainer(1, min_frequency))
    seeds = sorted(t for t in probe.get_vocab() if t.startswith("##"))
    trained = _new_tokenizer()
    trained.train_from_iterator(texts, trainer=_wordpiece_trainer(vocab_size, min_frequency,
                                                                  seeds))
    # A fresh tokenizer on the renumbered vocabulary: it also drops the seeds from the
    # special tokens the trainer registered.
    tok = _new_tokenizer(canonical_vocab(trained.get_vocab(with_added_tokens=False)))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    # The template needs the final ids, so it is attached last.
    ids = special_token_ids(tok)
    tok.post_processor = _bert_template(ids["cls"], ids["sep"])
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write `tok` as a single `tokenizer.json`, creating parent folders as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a `tokenizer.json`; a missing or unreadable file gives a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a bare Exception for bad JSON
        raise ValueError(f"could not read tokenizer file {path}: {err}") from err


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens, looked up by string: keys pad, unk, cls, sep, mask."""
    ids = {name: tok.token_to_id(token) for name, token in _SPECIAL_NAMES}
    missing = [token for name, token in _SPECIAL_NAMES if ids[name] is None]
    if missing:
        raise ValueError(f"tokenizer lacks special token(s) {', '.join(missing)}")
    return ids


# ---------------------------------------------------------------------------------------
# Configured copies (never mutate the caller's tokenizer)
# ---------------------------------------------------------------------------------------


def _truncation_matches(current: dict | None, max_len: int | None) -> bool:
    """True when the tokenizer already truncates exactly as asked (None = not at all)."""
    if max_len is None or current is None:
        return max_len is None and current is None
    return (current["max_length"] == max_len and current["strategy"] == "longest_first"
            and current["stride"] == 0 and current["direction"] == "right")


def _padding_matches(current: dict | None, pad: bool, pad_id: int) -> bool:
    """True when padding is off (pad=False) or pads right to the batch's longest with pad_id."""
    if not pad or current is None:
        return not pad and current is None
    return (current["length"] is None and current["pad_to_multiple_of"] is None
            and current["pad_id"] == pad_id and current["pad_type_id"] == 0
            and current["direction"] == "right")


def configured_tokenizer(tok: Tokenizer, max_len: int | None, pad: bool = False) -> Tokenizer:
    """`tok` with longest-first truncation at `max_len` (None: none) and optional padding.

    Padding, when on, is to the longest sequence of each batch with [PAD]. Returns `tok`
    itself when it is already configured so (no copy, nothing mutated); otherwise a
    private copy. Copying costs about 30 ms for a 30k-token vocabulary, so loops such as
    `data.batches` call this once and hand the result to `encode_batch`.
    """
    pad_id = special_token_ids(tok)["pad"]
    if _truncation_matches(tok.truncation, max_len) and _padding_matches(tok.padding, pad, pad_id):
        return tok
    # A copy, because enable_* mutates and the caller's object may be shared across threads.
    out = Tokenizer.from_str(tok.to_str())
    if max_len is None:
        out.no_truncation()
    else:
        out.enable_truncation(max_len, strategy="longest_first")
    if pad:
        out.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id))
    else:
        out.no_padding()
    return out


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


def _clean_input(text: str, what: str) -> str:
    """Reject empty / whitespace-only text; make lone surrogates encodable."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{what} is empty (or only whitespace); nothing to encode")
    return _LONE_SURROGATE.sub("\ufffd", text)


def _min_len(tok: Tokenizer, is_pair: bool) -> int:
    """Smallest max_len that keeps at least one token of every sequence.

    Below it the `tokenizers` library silently drops a whole sentence or ignores the limit.
    """
    n_special = tok.post_processor.num_special_tokens_to_add(is_pair) if tok.post_processor else 0
    return n_special + (2 if is_pair else 1)


def _check_max_len(tok: Tokenizer, max_len: int, is_pair: bool) -> None:
    """Clear error for a max_len too small for the special tokens plus one token per sentence."""
    lowest = _min_len(tok, is_pair)
    if max_len < lowest:
        kind = "a sentence pair" if is_pair else "one sentence"
        raise ValueError(f"max_len={max_len} is too small for {kind}; need at least {lowest}")


def _from_encoding(enc: Encoding, n_before: int, max_len: int,
                   keep: list[int] | None = None) -> EncodedText:
    """Turn a `tokenizers.Encoding` into our frozen record (only the tokens at `keep`, if
    given)."""
    # sequence_ids is None for tokens the post-processor added, else 0 / 1.
    segment = [-1 if s is None else s for s in enc.sequence_ids]
    fields = dict(
        input_ids=list(enc.ids),
        token_type_ids=list(enc.type_ids),
        attention_mask=list(enc.attention_mask),
        tokens=list(enc.tokens),
        # Offsets are per segment: sentence-2 offsets index into text_pair, not text.
        offsets=[tuple(o) for o in enc.offsets],
        segment=segment,
        special=[bool(m) for m in enc.special_tokens_mask],
    )
    if keep is not None:
        fields = {name: [values[i] for i in keep] for name, values in fields.items()}
    return EncodedText(**fields, truncated=n_before > max_len, n_tokens_before_truncation=n_before)


def _longest_first(n_first: int, n_second: int, budget: int) -> tuple[int, int]:
    """How many tokens of each sentence fit `budget`, longest first: the rule of the
    `tokenizers` library (`truncate_encodings`, strategy LongestFirst). The shorter one is
    kept whole when the longer can give up enough; otherwise each gets half the budget, the
    odd token going to the longer one (to the second on a tie)."""
    short, _ = sorted((n_first, n_second))
    keep_long = short if short > budget else max(short, budget - short)
    if short + keep_long > budget:
        short, keep_long = budget // 2, budget - budget // 2
    return (keep_long, short) if n_first > n_second else (short, keep_long)


def encode(tok: Tokenizer, text: str, text_pair: str | None = None,
           max_len: int = 128) -> EncodedText:
    """Encode one text (or a pair) for inspection, truncating longest-first to `max_len`.

    Text whose characters all normalise away (e.g. only control characters) is accepted and
    yields just the special tokens; only empty or whitespace-only input is an error.

    Cost: a tokenizer that stores no truncation and no padding is used as it is, for text
    of any length. Any other is first copied with both turned off (30-100 ms for a 30k
    vocabulary), on every call; callers that encode many texts, like the app, make that
    copy once with `configured_tokenizer(tok, None)` and pass it in.
    """
    text = _clean_input(text, "text")
    if text_pair is not None:
        text_pair = _clean_input(text_pair, "text_pair")
    _check_max_len(tok, max_len, text_pair is not None)
    # Encode untruncated to count tokens honestly; the tokenizer's own overflow
    # bookkeeping is awkward for pairs.
    full = configured_tokenizer(tok, None).encode(text, text_pair)
    n_before = len(full.ids)
    if n_before <= max_len:
        return _from_encoding(full, n_before, max_len)
    # Too long: cut each sentence's tail, longest first, and keep every special token. This
    # is what the library's truncation does before the post-processor adds the special
    # tokens (which does not move the others), so no second, truncating tokenizer is needed.
    sequence = full.sequence_ids  # None for special tokens, else 0 / 1
    lengths = [sequence.count(0), sequence.count(1)]
    budget = max_len - (n_before - sum(lengths))
    wanted = _longest_first(*lengths, budget) if text_pair is not None else (budget, 0)
    keep, seen = [], [0, 0]  # positions kept; tokens of each sentence kept so far
    for i, s in enumerate(sequence):
        if s is not None:
            if seen[s] == wanted[s]:
                continue
            seen[s] += 1
        keep.append(i)
    if len(keep) > max_len:  # guard against a library change in these semantics
        raise RuntimeError(f"truncation to {max_len} left {len(keep)} tokens")
    return _from_encoding(full, n_before, max_len, keep)


def encode_batch(tok: Tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                 max_len: int = 128) -> dict[str, torch.Tensor]:
    """Encode a batch to int64 tensors input_ids / token_type_ids / attention_mask, [B, L].

    L is the longest sequence in the batch (at most `max_len`); padding is [PAD] on the
    right with attention_mask 0. Uses the tokenizer's parallel batch encoder.
    """
    texts = [_clean_input(t, f"texts[{i}]") for i, t in enumerate(texts)]
    if not texts:
        raise ValueError("encode_batch needs at least one text")
    if text_pairs is not None:
        pairs = [_clean_input(t, f"text_pairs[{i}]") for i, t in enumerate(text_pairs)]
        if len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} text_pairs")
        inputs = list(zip(texts, pairs, strict=True))
    else:
        inputs = texts
    _check_max_len(tok, max_len, text_pairs is not None)
    encs = configured_tokenizer(tok, max_len, pad=True).encode_batch(inputs)
    return {
        "input_ids": torch.tensor([e.ids for e in encs], dtype=torch.long),              # [B, L]
        "token_type_ids": torch.tensor([e.type_ids for e in encs], dtype=torch.long),    # [B, L]
        "attention_mask": torch.tensor([e.attention_mask for e in encs], dtype=torch.long),
    }
