"""analysis.ablations: checkpoint discovery and the claims table."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from analysis.ablations import (
    _reported_metrics,
    choose_reference,
    claims_table,
    discover_checkpoints,
)
from dasg_moe import DasgConfig


def write_config(root, name, metrics=None, **fields):
    folder = root / name
    folder.mkdir()
    DasgConfig(**{"d_model": 32, "n_heads": 4, "task": "mrpc", **fields}).to_json(
        folder / "config.json")
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))


def test_discovery_rule(tmp_path):
    write_config(tmp_path, "mrpc-dasg-small", {"validation": {"accuracy": 0.8, "f1": 0.85}})
    write_config(tmp_path, "mrpc-dasg-big", d_model=64)
    write_config(tmp_path, "mrpc-random-small", router="random")
    write_config(tmp_path, "mrpc-switch-small", router="switch")
    write_config(tmp_path, "mrpc-dasg-small-g16", n_groups=16)
    write_config(tmp_path, "mrpc-dasg-small-g64", n_groups=64)
    write_config(tmp_path, "sst2-dasg-small", task="sst2")
    (tmp_path / "not-a-checkpoint").mkdir()
    found = discover_checkpoints(tmp_path, "mrpc").set_index("name")
    assert len(found) == 6  # sst2 and the folder without config.json left out
    assert found.loc["mrpc-random-small", "role"] == "random"
    assert found.loc["mrpc-switch-small", "role"] == "switch"
    assert found.loc["mrpc-dasg-small-g64", "role"] == "G sweep"
    assert found.loc["mrpc-dasg-small-g64", "n_groups"] == 64
    assert found.loc["mrpc-dasg-small", "reported_f1"] == 0.85
    assert math.isnan(found.loc["mrpc-dasg-big", "reported_accuracy"])
    # two plain DASG checkpoints: the one as wide as the ablations wins
    assert choose_reference(found.reset_index()) == "mrpc-dasg-small"
    assert choose_reference(found.reset_index(), "mrpc-dasg-big") == "mrpc-dasg-big"
    with pytest.raises(ValueError, match="reference"):
        choose_reference(found.reset_index(), "nope")


def test_missing_folder_finds_nothing(tmp_path):
    assert discover_checkpoints(tmp_path / "absent", "mrpc").empty


def test_reported_metrics_are_found_nested():
    assert _reported_metrics({"accuracy": 0.7, "note": "x"}) == {"accuracy": 0.7}
    assert _reported_metrics({"dev": {"eval": {"accuracy": 0.6, "f1": 0.5}}})["f1"] == 0.5
    assert _reported_metrics({"loss": 1.0}) == {}


def results(**accuracy):
    rows = {"ref": ("reference", 4), "rand": ("random", 4), "sw": ("switch", 4),
            "g16": ("G sweep", 16), "g64": ("G sweep", 64)}
    return pd.DataFrame([{"name": n, "role": rows[n][0], "n_groups": rows[n][1],
                          "accuracy": a, "n_examples": 10000} for n, a in accuracy.items()])


def test_claims_table_verdicts():
    table = claims_table(results(ref=0.80, rand=0.70, sw=0.85, g16=0.80, g64=0.70), "mrpc",
                         "ref").set_index("claim")
    assert table.iloc[0]["verdict"] == "agrees with the paper"
    assert "+10.00 points" in table.iloc[0]["ours"]
    assert table.iloc[1]["verdict"].startswith("best G = 16 (as the paper)")
    assert table.iloc[2]["verdict"] == "agrees with the paper"  # DASG below Switch on MRPC
    sst2 = claims_table(results(ref=0.80, rand=0.70, sw=0.85), "sst2", "ref")
    assert sst2.iloc[2]["verdict"] == "disagrees with the paper"


def test_claims_table_reports_missing_and_inconclusive():
    table = claims_table(results(ref=0.80, rand=0.799), "mrpc", "ref")
    assert table.iloc[0]["verdict"].startswith("not conclusive")
    assert table.iloc[1]["ours"].startswith("missing: no G-sweep")
    assert table.iloc[2]["ours"].startswith("missing: no Switch-router")
    assert claims_table(results(rand=0.7), "mrpc", None).iloc[0]["verdict"] == "cannot tell"
