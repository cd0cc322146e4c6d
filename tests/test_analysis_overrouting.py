"""analysis.overrouting on hand-built traces whose answers are known."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from trace_frames import make_frame, sentence_rows

from analysis.overrouting import (
    bootstrap_difference,
    complexity_bucket,
    correctness_table,
    deep_rate_by,
    example_overrouting,
    overrouting_summary,
    pair_consistency,
    recommend_thresholds,
    shared_word_pairs,
    worst_examples,
)


def four_decisions() -> pd.DataFrame:
    """deep+simple, deep+complex, shallow+simple, shallow+complex, and one row without a tier
    decision (dense layer) that every measure must ignore."""
    return make_frame([
        {"position": 0, "token": "the", "tier": "deep", "complexity": 0.1},
        {"position": 1, "token": "quantum", "tier": "deep", "complexity": 0.9},
        {"position": 2, "token": "a", "tier": "shallow", "complexity": 0.2},
        {"position": 3, "token": "dog", "tier": "shallow", "complexity": 0.5},
        {"position": 4, "token": "x", "tier": "none", "complexity": 0.1, "moe": False}])


def test_summary_definitions():
    s = overrouting_summary(four_decisions())
    assert (s["decisions"], s["deep"], s["simple"], s["overrouted"]) == (4, 2, 2, 1)
    assert s["deep_tier_rate"] == 0.5
    assert s["overrouting_index"] == 0.5  # 1 of 2 deep decisions on a simple token
    assert s["overrouting_rate"] == 0.25  # 1 of 4 decisions
    assert s["simple_deep_rate"] == 0.5  # 1 of 2 simple tokens went deep


def test_simple_below_overrides_the_threshold_in_force():
    s = overrouting_summary(four_decisions(), simple_below=0.95)
    assert s["overrouting_index"] == 1.0
    strict = overrouting_summary(four_decisions(), simple_below=0.05)
    assert strict["overrouted"] == 0 and strict["overrouting_index"] == 0.0


def test_routers_without_evaluator_or_tiers_give_nan():
    no_eval = four_decisions().assign(complexity=math.nan)
    s = overrouting_summary(no_eval)
    assert s["simple"] == 0 and s["overrouting_index"] == 0.0
    assert math.isnan(s["simple_deep_rate"])
    untiered = four_decisions().assign(tier="none")
    s = overrouting_summary(untiered)
    assert s["decisions"] == 0
    assert math.isnan(s["deep_tier_rate"]) and math.isnan(s["overrouting_index"])


def test_complexity_buckets_are_half_open_and_cover_one():
    buckets = complexity_bucket(pd.Series([0.0, 0.1, 0.0999, 0.95, 1.0, math.nan]))
    assert list(buckets[:5]) == ["0.0-0.1", "0.1-0.2", "0.0-0.1", "0.9-1.0", "0.9-1.0"]
    assert pd.isna(buckets[5])


def test_deep_rate_by_kind_and_bucket():
    frame = four_decisions()
    by_token = deep_rate_by(frame, "token")
    assert by_token.set_index("token")["deep_rate"].to_dict() == {
        "a": 0.0, "dog": 0.0, "quantum": 1.0, "the": 1.0}
    assert "x" not in set(by_token["token"])  # no tier decision
    by_bucket = deep_rate_by(frame, complexity_bucket(frame["complexity"]).rename("bucket"))
    assert len(by_bucket) == 10  # empty buckets are kept
    low = by_bucket.set_index("bucket").loc["0.1-0.2"]
    assert (low["decisions"], low["deep"], low["overrouted"]) == (1, 1, 1)
    assert low["overrouting_index"] == 1.0
    assert by_bucket["share_of_deep"].sum() == pytest.approx(1.0)
    assert math.isnan(by_bucket.set_index("bucket").loc["0.3-0.4", "deep_rate"])


def two_examples():
    """Example 0 (correct): 1 over-routed of 4 decisions. Example 1 (wrong): 2 of 2."""
    rows = [{"example": 0, "position": i, "token": t, "tier": tier, "complexity": c}
            for i, (t, tier, c) in enumerate([("the", "deep", 0.1), ("big", "deep", 0.8),
                                              ("a", "shallow", 0.1), ("dog", "shallow", 0.6)])]
    rows += [{"example": 1, "position": i, "token": t, "tier": "deep", "complexity": 0.1}
             for i, t in enumerate(["of", "the"])]
    examples = pd.DataFrame({"example": [0, 1], "label": [1, 0], "prediction": [1, 1],
                             "prob": [0.9, 0.6], "correct": [True, False], "n_tokens": [4, 2],
                             "text": ["s1", "t1"], "text_pair": ["s2", "t2"]})
    return make_frame(rows), examples


def test_example_overrouting_and_correctness():
    frame, examples = two_examples()
    per = example_overrouting(frame, examples).set_index("example")
    assert per.loc[0, "overrouting_rate"] == 0.25 and per.loc[0, "overrouting_index"] == 0.5
    assert per.loc[1, "overrouting_rate"] == 1.0
    assert per.loc[1, "overrouted_words"] == "of×1, the×1"
    table = correctness_table(per.reset_index()).set_index("predictions")
    assert table.loc["correct", "overrouting_rate"] == 0.25
    assert table.loc["wrong", "overrouting_rate"] == 1.0
    assert table.loc["all", "overrouting_rate"] == 0.5  # pooled: 3 of 6 decisions
    assert table.loc["all", "mean_example_overrouting_rate"] == 0.625  # (0.25 + 1) / 2


def test_bootstrap_difference_of_constant_groups_is_exact():
    per = pd.DataFrame({"correct": [True, True, False, False], "decisions": [4, 4, 2, 2],
                        "overrouted": [1, 1, 2, 2]})
    diff = bootstrap_difference(per, n_boot=200)
    assert diff["difference"] == pytest.approx(0.75)
    assert diff["low"] == pytest.approx(0.75) and diff["high"] == pytest.approx(0.75)
    assert math.isnan(bootstrap_difference(per[per["correct"]])["difference"])


def test_worst_examples_ranks_by_overrouting_rate():
    frame, examples = two_examples()
    worst = worst_examples(example_overrouting(frame, examples), ["no", "yes"])
    assert worst["example"].tolist() == [1, 0]
    assert worst.loc[0, "label"] == "no" and worst.loc[0, "prediction"] == "yes"
    assert worst.loc[0, "text_pair"] == "t2"


def paraphrase_pair():
    """s1 "the cat sat ." / s2 "the cat ran .": shared words the, cat (and "." left out).
    Tiers s1: deep deep shallow, s2: deep shallow shallow; experts equal for "the" only."""
    s1 = sentence_rows(["[CLS]", "the", "cat", "sat", ".", "[SEP]"], segment=1,
                       tier=("deep", "deep", "deep", "shallow", "deep", "deep"),
                       experts=([2, 3], [2, 3], [2, 3], [0, 1], [2, 3], [2, 3]))
    s2 = sentence_rows(["the", "cat", "ran", ".", "[SEP]"], segment=2, start_position=6,
                       tier=("deep", "shallow", "shallow", "deep", "deep"),
                       experts=([2, 3], [0, 1], [0, 1], [2, 3], [2, 3]))
    return make_frame(s1 + s2)


def test_pair_consistency_known_rates_and_chance():
    table = pair_consistency(paraphrase_pair(), by=None).iloc[0]
    assert table["pairs"] == 2  # the, cat
    assert table["same_tier_rate"] == 0.5 and table["same_experts_rate"] == 0.5
    # any s1 word token (deep, deep, shallow) vs any s2 one (deep, shallow, shallow):
    # 2 x 1 deep pairs + 1 x 2 shallow pairs = 4 of 9; experts follow the tiers here.
    assert table["same_tier_chance"] == pytest.approx(4 / 9)
    assert table["same_experts_chance"] == pytest.approx(4 / 9)


def test_pair_consistency_pairs_every_occurrence_and_skips_punctuation():
    s1 = sentence_rows(["the", "the", ","], segment=1)
    s2 = sentence_rows(["the", ","], segment=2, start_position=3)
    pairs = shared_word_pairs(make_frame(s1 + s2))
    assert len(pairs) == 2 and set(pairs["word_text"]) == {"the"}


def test_pair_consistency_without_tiers_is_nan_for_tiers_only():
    frame = paraphrase_pair().assign(tier="none")
    row = pair_consistency(frame, by=None).iloc[0]
    assert math.isnan(row["same_tier_rate"]) and math.isnan(row["same_tier_chance"])
    assert row["same_experts_rate"] == 0.5


def sweep_table():
    return pd.DataFrame({
        "theta_s": [0.3, 0.3, 0.4, 0.5], "theta_d": [0.7, 0.8, 0.8, 0.9],
        "f1": [0.80, 0.795, 0.70, 0.792], "accuracy": [0.7] * 4,
        "overrouting_rate": [0.10, 0.06, 0.01, 0.04],
        "flops_per_token": [100.0, 90.0, 60.0, 80.0], "deep_tier_rate": [0.6, 0.5, 0.2, 0.4]})


def test_recommendation_cuts_most_within_tolerance():
    r = recommend_thresholds(sweep_table(), "mrpc", tolerance=0.01)
    # (0.4, 0.8) cuts most but loses 0.10 F1; (0.5, 0.9) cuts more than (0.3, 0.8).
    assert r["found"] and (r["theta_s"], r["theta_d"]) == (0.5, 0.9)
    assert r["metric"] == "f1"
    assert r["metric_change"] == pytest.approx(-0.008)
    assert r["overrouting_rate_change"] == pytest.approx(-0.06)
    assert r["flops_change"] == pytest.approx(-0.2)
    loose = recommend_thresholds(sweep_table(), "mrpc", tolerance=0.2)
    assert (loose["theta_s"], loose["theta_d"]) == (0.4, 0.8)


def test_recommendation_explains_when_nothing_qualifies():
    table = sweep_table()
    assert not recommend_thresholds(table, "mrpc", tolerance=0.001)["found"]
    assert "baseline" in recommend_thresholds(table.iloc[1:], "mrpc")["reason"]
    zero = table.assign(overrouting_rate=0.0)
    assert "no over-routing" in recommend_thresholds(zero, "mrpc")["reason"]
