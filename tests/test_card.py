"""Specification of the model card's Origin section (dasg_moe.card.model_card): its Grouping
sentence must describe what the grouping does to inputs of the measured length, so a card
claims that inputs fit in the first group only when the mean validation input does."""

from __future__ import annotations

import re

from dasg_moe.card import model_card
from dasg_moe.config import DasgConfig

TRANSFER = "python -m dasg_moe.train --task mrpc --from-pretrained minilm --out x"
# The MRPC flagship's measured totals: 21723 tokens over 408 validation inputs (mean 53.2).
MRPC_METRICS = {"accuracy": 0.8, "n_examples": 408, "n_tokens": 21723,
                "training": {"command": TRANSFER}}


def grouping(cfg: DasgConfig, metrics: dict) -> str:
    """The Grouping paragraph of the card, on one line."""
    card = model_card(cfg, metrics, "x")
    text = card[card.index("Grouping:"):card.index("## Known weaknesses")]
    return " ".join(text.split())


def test_large_groups_say_a_typical_input_fits_in_the_first_group():
    text = grouping(DasgConfig(max_len=128, n_groups=2, window=512), MRPC_METRICS)
    assert "G = 2 groups of 64 tokens with a window of 512" in text
    assert "Validation inputs average 53 tokens" in text
    assert "fits in the first group, where attention is exactly the pretrained full attention" \
        in text
    assert "spans" not in text


def test_small_groups_say_a_typical_input_spans_several_groups():
    text = grouping(DasgConfig(max_len=128, n_groups=16, window=16), MRPC_METRICS)
    assert "G = 16 groups of 8 tokens" in text
    assert "Validation inputs average 53 tokens" in text
    assert "fit" not in text  # neither "fits in the first group" nor "most inputs fit"
    assert "a typical input spans 7 groups" in text
    assert "8-token pieces" in text and "long-range path carries what crosses groups" in text


def test_small_groups_with_short_inputs_still_fit():
    metrics = {**MRPC_METRICS, "n_tokens": 6 * 408}  # mean 6 tokens < 8-token groups
    text = grouping(DasgConfig(max_len=128, n_groups=16, window=16), metrics)
    assert "Validation inputs average 6 tokens" in text and "fits in the first group" in text


def test_a_window_narrower_than_the_group_is_not_called_full_attention():
    cfg = DasgConfig(max_len=128, n_groups=2, window=16, aggregate_groups=False)
    text = grouping(cfg, MRPC_METRICS)
    assert "limited to 8 tokens either side" in text and "full attention" not in text
    assert "nothing crosses groups" in text and "long-range path" not in text


def test_without_measured_lengths_the_card_makes_no_claim_about_fitting():
    metrics = {k: v for k, v in MRPC_METRICS.items() if k != "n_tokens"}
    text = grouping(DasgConfig(max_len=128, n_groups=2, window=512), metrics)
    assert text.startswith("Grouping: G = 2 groups of 64 tokens with a window of 512:")
    assert not re.search(r"\bfits?\b|spans|average", text)


def test_from_scratch_and_full_attention_cards():
    scratch = model_card(DasgConfig(n_groups=16), {"n_examples": 408, "n_tokens": 21723}, "x")
    assert "Trained from scratch" in scratch and "Grouping" not in scratch
    full = grouping(DasgConfig(attention="mha"), MRPC_METRICS)
    assert full.startswith("Grouping: full attention.")


def test_the_card_describes_each_routers_own_selection_and_tiers():
    dasg = model_card(DasgConfig(router="dasg"), MRPC_METRICS, "x")
    assert "top-2 inside the chosen tier" in dasg and "| thresholds | theta_s = 0.3" in dasg
    assert "--theta-s 0.2 --theta-d 0.8" in dasg and "deep expert's frozen first layer" in dasg
    switch = model_card(DasgConfig(router="switch", n_shallow=8), MRPC_METRICS, "x")
    assert "8 shallow (width" in switch and ", top-1 |" in switch
    assert "theta" not in switch.split("<details>")[0] and "deep expert" not in switch
    da_moe = model_card(DasgConfig(router="da_moe", k_max=4), MRPC_METRICS, "x")
    assert "1 to 4 per token by importance" in da_moe
    mh_moe = model_card(DasgConfig(router="mh_moe", mh_heads=2), MRPC_METRICS, "x")
    assert "2 sub-tokens per token, top-2 each" in mh_moe
