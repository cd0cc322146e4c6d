"""What kind of token a trace row is: whole words, token kinds, training-data frequency.

`annotate_tokens(frame)` adds to a trace frame:

- `word`: index of the whole word within its example (a WordPiece word is a first piece
  followed by its `##` continuations), `piece`: 0 for the first piece, 1, 2, ... after;
- `word_text`: the lowercased whole word ("playing" for "play", "##ing");
- `kind`, one of `TOKEN_KINDS`:
  `special` ([CLS], [SEP]), `subword` (a `##` continuation piece), `punctuation` (a word made
  only of Unicode punctuation or symbols), `stopword` (a word in `STOPWORDS`), `content`
  (everything else). The first piece of a split word takes the kind of the whole word.

`STOPWORDS` is a small built-in English list (the classic ~150-word list used by NLTK and
scikit-learn, plus the clitic pieces "s", "t", "ll", "re", "ve", "d", "m" that BERT's
pre-tokeniser cuts off "it's", "don't", ...). Paper silent; it is good enough to separate
function words from content words in GLUE English, not a linguistic resource.

`training_token_counts` counts how often each token id occurs in a task's training split
(the checkpoint's tokenizer, no special tokens) and `add_frequency` buckets those counts.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
from tokenizers import Tokenizer

from dasg_moe.data import get_task, load_glue

from .cache import read_parquet, write_parquet

TOKEN_KINDS = ("special", "punctuation", "stopword", "subword", "content")

_STOPWORD_TEXT = """
a about above after again against all am an and any are aren as at be because been before being
below between both but by can cannot could couldn did didn do does doesn doing don down during
each few for from further had hadn has hasn have haven having he her here hers herself him
himself his how i if in into is isn it its itself just me more most mustn my myself no nor not
now of off on once only or other ought our ours ourselves out over own same shan she should
shouldn so some such than that the their theirs them themselves then there these they this
those through to too under until up very was wasn we were weren what when where which while who
whom why will with won would wouldn you your yours yourself yourselves
s t ll re ve d m
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

# Training-frequency buckets: (lower bound inclusive, label), counts per token id.
FREQUENCY_BUCKETS = ((0, "unseen"), (1, "1-9"), (10, "10-99"), (100, "100-999"),
                     (1000, "1k-10k"), (10000, ">=10k"))


def _is_punctuation(word: str) -> bool:
    """True for a non-empty word made only of punctuation (P*) or symbol (S*) characters."""
    return bool(word) and all(unicodedata.category(c)[0] in "PS" for c in word)


def word_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (example, position) with word, piece, word_text, kind (see module doc).

    Uses the first layer's rows: positions and token strings are the same in every layer."""
    if "token" not in frame.columns:
        raise ValueError("the trace frame has no `token` column; trace with token strings "
                         "(trace_dataset adds them)")
    base = frame.loc[frame["layer"] == frame["layer"].min(),
                     ["example", "position", "token", "special"]]
    base = base.sort_values(["example", "position"], ignore_index=True)
    token = base["token"].astype(str)
    continuation = token.str.startswith("##") & ~base["special"]
    new_example = base["example"].ne(base["example"].shift())
    word_global = (~continuation | new_example).cumsum() - 1  # running word number
    piece = base.groupby(word_global).cumcount()
    text = token.str.removeprefix("##").str.lower()
    word_text = text.groupby(word_global).transform("sum")
    first_word = word_global.groupby(base["example"]).transform("min")
    kind = np.select(
        [base["special"].to_numpy(), (piece > 0).to_numpy(),
         word_text.map(_is_punctuation).to_numpy(bool),
         word_text.isin(STOPWORDS).to_numpy()],
        ["special", "subword", "punctuation", "stopword"], default="content")
    return pd.DataFrame({"example": base["example"], "position": base["position"],
                         "word": (word_global - first_word).to_numpy(),
                         "piece": piece.to_numpy(), "word_text": word_text.to_numpy(),
                         "kind": pd.Categorical(kind, categories=TOKEN_KINDS)})


def annotate_tokens(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with word, piece, word_text and kind columns (a no-op if already present)."""
    if "kind" in frame.columns:
        return frame
    merged = frame.merge(word_table(frame), on=["example", "position"], how="left",
                         validate="many_to_one")
    merged.attrs.update(frame.attrs)
    return merged


def training_token_counts(tokenizer: Tokenizer, task: str, data_dir: str | None = None, *,
                          split: str = "train", cache_file: str | Path | None = None,
                          dataset=None) -> pd.Series:
    """How often each token id occurs in `split` of `task` (all text columns, no special
    tokens, no truncation). Index: token id; values: counts (ids never seen are absent).

    Pass `dataset` to count a dataset you already hold; `cache_file` stores the result."""
    if cache_file is not None and Path(cache_file).is_file():
        counts = read_parquet(cache_file)
        return counts.set_index("token_id")["count"]
    spec = get_task(task)
    dataset = dataset if dataset is not None else load_glue(task, split, data_dir)
    plain = Tokenizer.from_str(tokenizer.to_str())  # a copy: never mutate a shared tokenizer
    plain.no_truncation()
    plain.no_padding()
    ids = [np.asarray(e.ids, dtype=np.int64) for column in spec.text_columns
           for e in plain.encode_batch(list(dataset[column]), add_special_tokens=False)]
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    values, counts = np.unique(flat, return_counts=True)
    result = pd.DataFrame({"token_id": values, "count": counts})
    if cache_file is not None:
        write_parquet(result, cache_file)
    return result.set_index("token_id")["count"]


def frequency_bucket(counts: pd.Series | np.ndarray) -> pd.Categorical:
    """Bucket training counts into the ordered `FREQUENCY_BUCKETS` labels."""
    bounds = [b for b, _ in FREQUENCY_BUCKETS]
    labels = [name for _, name in FREQUENCY_BUCKETS]
    index = np.searchsorted(bounds, np.asarray(counts), side="right") - 1
    return pd.Categorical.from_codes(index, categories=labels, ordered=True)


def add_frequency(frame: pd.DataFrame, counts: pd.Series) -> pd.DataFrame:
    """`frame` with `train_count` (occurrences of the token id in the training split; special
    tokens get NaN) and `frequency` (its bucket; NaN for special tokens)."""
    out = frame.copy()
    train_count = out["token_id"].map(counts).fillna(0).astype(float)
    out["train_count"] = train_count.where(~out["special"])
    out["frequency"] = frequency_bucket(train_count.to_numpy())
    out.loc[out["special"], "frequency"] = np.nan
    return out
