"""The shipped sample checkpoints: every one loads, its config says what its name says, it
stays within the size budget, and `evaluate` reproduces its metrics.json (DESIGN.md §4).

The small from-scratch checkpoints are re-evaluated on the whole validation split here; the
MiniLM-sized flagships take longer, so the test re-evaluates them on a subset only for
sanity and `python -m dasg_moe.build_samples --verify` does the full check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dasg_moe import load_checkpoint
from dasg_moe.build_samples import RECIPES, verify
from dasg_moe.evaluate import evaluate_model

ROOT = Path(__file__).resolve().parents[1] / "sample_checkpoints"
SHIPPED = sorted(p for p in ROOT.iterdir() if (p / "config.json").is_file())


def test_samples_are_shipped_and_fit_the_size_budget():
    assert {p.name for p in SHIPPED} >= {"mrpc-dasg-minilm", "mrpc-dasg-small"}
    sizes = {p.name: sum(f.stat().st_size for f in p.iterdir()) for p in SHIPPED}
    assert all(size < 60e6 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 250e6


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_sample_loads_and_matches_its_name_and_recipe(folder):
    ckpt = load_checkpoint(folder)
    task, router = folder.name.split("-")[:2]
    assert ckpt.config.task == task
    assert ckpt.config.router == router
    assert folder.name in RECIPES
    for key in ("accuracy", "deep_tier_rate", "mean_experts_per_token", "flops_per_token",
                "params_total", "params_active", "training"):
        assert key in ckpt.metrics
    card = (folder / "README.md").read_text()
    assert "python -m dasg_moe.train" in card and "accuracy" in card
    assert not any(f.suffix in (".bin", ".pt", ".pth", ".pkl") for f in folder.iterdir())


@pytest.mark.parametrize("folder", [p for p in SHIPPED if p.name.endswith(
    ("-small", "-g1", "-g4", "-g64"))], ids=lambda p: p.name)
def test_small_sample_metrics_reproduce(folder, glue_dir):
    assert verify(folder, str(glue_dir)) == []


@pytest.mark.parametrize("folder", [p for p in SHIPPED if p.name.endswith("-minilm")],
                         ids=lambda p: p.name)
def test_flagship_beats_chance_on_a_validation_subset(folder, glue_dir):
    ckpt = load_checkpoint(folder)
    result = evaluate_model(ckpt.model, ckpt.tokenizer, ckpt.config.task, "validation",
                            str(glue_dir), max_examples=64, progress=False)
    assert result["accuracy"] > 0.6
