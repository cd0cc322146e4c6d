"""analysis.compare: alignment, tier agreement, matched expert overlap, metrics."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from trace_frames import make_frame, sentence_rows

from analysis.compare import (
    align,
    disagreements,
    expert_matching,
    metric_differences,
    tier_agreement,
)

A_TIERS = ("deep", "deep", "shallow", "shallow")
A_EXPERTS = ([2, 3], [2, 3], [0, 1], [0, 1])


def pair(b_tiers=A_TIERS, b_experts=A_EXPERTS, b_tokens=None):
    tokens = ["[CLS]", "big", "dog", "[SEP]"]
    a = make_frame(sentence_rows(tokens, tier=A_TIERS, experts=A_EXPERTS,
                                 start=(0, 0, 4, 0), end=(0, 3, 7, 0)))
    b = make_frame(sentence_rows(b_tokens or tokens, tier=b_tiers, experts=b_experts,
                                 start=(0, 0, 4, 0), end=(0, 3, 7, 0)))
    return a, b


def test_identical_traces_agree_fully():
    aligned = align(*pair())
    assert aligned.attrs["coverage"] == 1.0 and len(aligned) == 4
    row = tier_agreement(aligned).set_index("layer").loc["all"]
    assert row["agreement"] == 1.0 and row["kappa"] == 1.0
    summary, _ = expert_matching(aligned, ["S0", "S1", "D0", "D1"], ["S0", "S1", "D0", "D1"])
    assert summary.loc[0, "overlap_identity"] == 1.0 and summary.loc[0, "overlap_matched"] == 1.0


def test_kappa_and_agreement_known_values():
    aligned = align(*pair(b_tiers=("deep", "shallow", "shallow", "shallow")))
    row = tier_agreement(aligned).set_index("layer").loc["all"]
    assert row["agreement"] == 0.75
    # A: 2 deep / 2 shallow; B: 1 deep / 3 shallow -> chance 0.5*0.25 + 0.5*0.75 = 0.5
    assert row["kappa"] == pytest.approx((0.75 - 0.5) / 0.5)
    assert (row["deep_rate_a"], row["deep_rate_b"]) == (0.5, 0.25)


def test_permuted_experts_match_after_assignment():
    """B is A with its experts renamed by pi = {0: 2, 1: 3, 2: 0, 3: 1}: no overlap by index,
    full overlap once the Hungarian matching recovers pi."""
    labels = ["E0", "E1", "E2", "E3"]
    a_experts = ([0, 1], [0, 1], [2, 3], [1, 2])
    pi = {0: 2, 1: 3, 2: 0, 3: 1}
    b_experts = tuple([pi[e] for e in experts] for experts in a_experts)
    a, b = pair(b_tiers=("none",) * 4, b_experts=b_experts)
    a = a.assign(tier="none", experts=list(a_experts))
    summary, matches = expert_matching(align(a, b), labels, labels)
    assert summary.loc[0, "overlap_identity"] == 0.0
    assert summary.loc[0, "overlap_matched"] == 1.0
    assert dict(zip(matches["expert_a"], matches["expert_b"], strict=True)) == {
        "E0": "E2", "E1": "E3", "E2": "E0", "E3": "E1"}
    assert matches.set_index("expert_a").loc["E1", "share_of_a"] == 1.0


def test_alignment_by_span_survives_other_tokenisations():
    a, _ = pair()
    b = make_frame(sentence_rows(["[CLS]", "bi", "##g", "dog", "[SEP]"],
                                 start=(0, 0, 2, 4, 0), end=(0, 2, 3, 7, 0)))
    aligned = align(a, b)
    assert aligned["token"].tolist() == ["[CLS]", "dog", "[SEP]"]
    assert aligned.attrs["coverage"] == 0.75


def test_alignment_without_offsets_needs_identical_ids():
    a, b = pair()
    aligned = align(a.drop(columns=["start", "end"]), b.drop(columns=["start", "end"]))
    assert len(aligned) == 4
    b2 = b.drop(columns=["start", "end"]).assign(token_id=b["token_id"] + 1)
    assert align(a.drop(columns=["start", "end"]), b2).empty


def test_disagreements_and_untiered_nan():
    aligned = align(*pair(b_tiers=("deep", "shallow", "shallow", "shallow")))
    by_token = disagreements(aligned, "token", min_count=1)
    assert by_token.iloc[0]["token"] == "big" and by_token.iloc[0]["tier_disagreement"] == 1.0
    untiered = align(*pair(b_tiers=("none",) * 4))
    assert math.isnan(tier_agreement(untiered).set_index("layer").loc["all", "agreement"])


def test_metric_differences_against_the_first():
    def examples(pred):
        return pd.DataFrame({"example": [0, 1], "label": [1, 0], "prediction": pred,
                             "prob": 0.9, "n_tokens": 2, "flops": [10.0, 10.0],
                             "deep_decisions": 1.0, "tier_decisions": 2.0,
                             "expert_slots": 4.0, "moe_tokens": 2.0})
    table = metric_differences({"A": examples([1, 0]), "B": examples([1, 1])}, "mrpc")
    b = table.set_index("checkpoint").loc["B"]
    assert b["accuracy"] == 0.5 and b["d_accuracy"] == -0.5
    assert b["prediction_agreement"] == 0.5
