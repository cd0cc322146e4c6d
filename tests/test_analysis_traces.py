"""analysis.traces: dataset traces from the same forward pass as predict(), cached in
resumable chunks; the sweep's cheap path agrees with the trace frame."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.cache import checkpoint_cache_dir
from analysis.overrouting import overrouting_summary
from analysis.sweep import sweep_thresholds
from analysis.traces import predict_routing, routing_frame_from_trace, trace_dataset
from dasg_moe import RoutingOverrides, load_checkpoint
from dasg_moe.data import load_glue
from dasg_moe.evaluate import predict
from dasg_moe.tokenizer import encode

N = 10


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def dataset(glue_dir):
    return load_glue("mrpc", "validation", str(glue_dir)).select(range(N))


def count_forwards(monkeypatch, model) -> list[int]:
    calls = []
    original = model.forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    return calls


def test_trace_matches_predict_and_the_tokenizer(ckpt, dataset):
    tokens, examples = trace_dataset(ckpt.model, ckpt.tokenizer, "mrpc", dataset,
                                     batch_size=4, progress=False)
    reference = predict(ckpt.model, ckpt.tokenizer, "mrpc", dataset, batch_size=4,
                        progress=False)
    for column in ("label", "prediction", "n_tokens", "flops", "deep_decisions",
                   "tier_decisions", "expert_slots"):
        assert examples[column].tolist() == pytest.approx(reference[column].tolist()), column
    assert examples["prob"].tolist() == pytest.approx(reference["prob"].tolist(), abs=1e-6)
    assert examples["example"].tolist() == list(range(N))
    assert examples["text"].iloc[3] == dataset[3]["sentence1"]
    assert sorted(tokens["example"].unique()) == list(range(N))  # global, not per batch
    enc = encode(ckpt.tokenizer, dataset[7]["sentence1"], dataset[7]["sentence2"],
                 max_len=ckpt.config.max_len)
    first = tokens[(tokens["example"] == 7) & (tokens["layer"] == 0)].sort_values("position")
    assert first["token"].tolist() == enc.tokens
    assert list(zip(first["start"], first["end"], strict=True)) == enc.offsets
    assert tokens.attrs["router"] == "dasg" and tokens.attrs["expert_labels"][0] == "S0"
    # per-example totals of the trace frame agree with the model's own counts
    deep = tokens[tokens["tier"] == "deep"].groupby("example").size()
    assert deep.reindex(range(N), fill_value=0).tolist() == examples["deep_decisions"].tolist()


def test_thresholds_reach_the_trace(ckpt, dataset):
    tokens, _ = trace_dataset(ckpt.model, ckpt.tokenizer, "mrpc", dataset.select(range(2)),
                              overrides=RoutingOverrides(0.0, 0.0), progress=False)
    # every score above theta_d = 0 goes deep (only a score of exactly 0 is left to the policy)
    assert (tokens["theta_d"] == 0.0).all() and (tokens["tier"] == "deep").mean() > 0.9
    with pytest.raises(ValueError, match="thresholds"):
        trace_dataset(ckpt.model, ckpt.tokenizer, "mrpc", dataset,
                      overrides=RoutingOverrides(0.8, 0.2), progress=False)


def test_cache_resumes_an_interrupted_trace(ckpt, dataset, tmp_path, monkeypatch):
    cache = checkpoint_cache_dir(ckpt.path, tmp_path)
    kwargs = dict(batch_size=2, progress=False, cache_dir=cache, chunk_size=4)
    tokens, examples = trace_dataset(ckpt.model, ckpt.tokenizer, "mrpc", dataset, **kwargs)
    parts = sorted(cache.glob("trace-*/part-*.examples.parquet"))
    assert [p.name for p in parts] == ["part-0000000-0000004.examples.parquet",
                                       "part-0000004-0000008.examples.parquet",
                                       "part-0000008-0000010.examples.parquet"]
    parts[1].unlink()  # as if the run had been stopped while writing the middle chunk
    calls = count_forwards(monkeypatch, ckpt.model)
    again_tokens, again_examples = trace_dataset(ckpt.model, ckpt.tokenizer, "mrpc", dataset,
                                                 **kwargs)
    assert len(calls) == 2  # only the missing chunk's two batches ran
    pd.testing.assert_frame_equal(again_examples, examples)
    pd.testing.assert_frame_equal(again_tokens, tokens, check_dtype=False)
    assert isinstance(again_tokens["experts"].iloc[0], list)
    assert not list(cache.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_predict_routing_agrees_with_the_trace_frame(ckpt, dataset):
    simple_below = 0.5  # the untrained evaluator scores C around 0.5: both kinds occur
    tokens, examples = trace_dataset(ckpt.model, ckpt.tokenizer, "mrpc", dataset,
                                     progress=False)
    frame = predict_routing(ckpt.model, ckpt.tokenizer, "mrpc", dataset,
                            simple_below=simple_below, progress=False)
    totals = overrouting_summary(tokens, simple_below)
    assert frame["overrouted_decisions"].sum() == totals["overrouted"]
    assert frame["simple_decisions"].sum() == totals["simple"]
    assert totals["simple"] > 0
    from_trace = routing_frame_from_trace(tokens, examples, simple_below)
    pd.testing.assert_frame_equal(from_trace[frame.columns], frame, check_dtype=False,
                                  atol=1e-6)


def test_sweep_is_cached_per_pair(ckpt, dataset, tmp_path, monkeypatch):
    cache = checkpoint_cache_dir(ckpt.path, tmp_path)
    pairs = [(0.3, 0.7), (0.0, 0.0)]
    table = sweep_thresholds(ckpt.model, ckpt.tokenizer, "mrpc", dataset, pairs,
                             progress=False, cache_dir=cache)
    assert table[["theta_s", "theta_d"]].values.tolist() == [[0.0, 0.0], [0.3, 0.7]]
    assert table["paper_default"].tolist() == [False, True]
    assert table.loc[0, "deep_tier_rate"] > 0.9  # theta_d = 0: (nearly) every token deep
    calls = count_forwards(monkeypatch, ckpt.model)
    wider = sweep_thresholds(ckpt.model, ckpt.tokenizer, "mrpc", dataset,
                             [*pairs, (1.0, 1.0)], progress=False, cache_dir=cache)
    assert len(calls) == 1  # one batch of 10 examples, for the new pair only
    assert wider.loc[2, "deep_tier_rate"] < 0.1  # theta_s = 1: (nearly) every token shallow
