"""End to end: `python -m analysis overrouting` and `sweep` on a small checkpoint and the
real MRPC data (first examples only), as a user runs them. Both commands are started at the
beginning of the session by the `analysis_cli_runs` fixture (conftest.py), since each spends
seconds importing torch and `datasets`."""

from __future__ import annotations

import pandas as pd
import pytest

from dasg_moe.checkpoint import read_config


@pytest.fixture(scope="module")
def runs(analysis_cli_runs):
    tmp, background = analysis_cli_runs
    results = {}
    for name, run in background.items():
        done = run.result(timeout=300)
        results[name] = (done.returncode, done.stdout, done.stderr)
    return tmp, results


def test_overrouting_report(runs, tiny_checkpoint):
    tmp, results = runs
    code, out, err = results["overrouting"]
    assert code == 0, err
    folder = tmp / "overrouting"
    assert "report written to" in out
    text = (folder / "report.md").read_text()
    for heading in ("## Definitions", "## Headline", "## Deep-tier rate by complexity",
                    "## Deep-tier rate by token kind", "## Over-routing and correctness",
                    "## Paraphrase-pair consistency", "## Recommendation",
                    "## Threshold sweep"):
        assert heading in text, heading
    by_kind = pd.read_csv(folder / "by_kind.csv")
    assert set(by_kind["kind"]) >= {"special", "stopword", "content"}
    assert by_kind["decisions"].sum() > 0
    cfg = read_config(tiny_checkpoint)
    n_moe = sum(cfg.is_moe_layer(layer) for layer in range(cfg.n_layers))
    assert len(pd.read_csv(folder / "by_layer.csv")) == n_moe
    assert set(pd.read_csv(folder / "by_frequency.csv")["frequency"]) >= {"unseen", ">=10k"}
    assert (folder / "by_kind.html").is_file() and (folder / "plotly.min.js").is_file()
    sweep = pd.read_csv(folder / "sweep.csv")
    assert sweep[["theta_s", "theta_d"]].values.tolist() == [[0.3, 0.7], [0.3, 0.9]]
    assert (tmp / "cache-o").is_dir() and list((tmp / "cache-o").rglob("*.parquet"))


def test_sweep_report(runs):
    tmp, results = runs
    code, _, err = results["sweep"]
    assert code == 0, err
    table = pd.read_csv(tmp / "sweep" / "sweep.csv")
    assert table[["theta_s", "theta_d"]].values.tolist() == [[0.2, 0.7], [0.3, 0.7]]
    assert table["paper_default"].tolist() == [False, True]  # (0.3, 0.7) marked
    assert table["pareto"].any()
    for column in ("accuracy", "f1", "deep_tier_rate", "flops_per_token"):
        assert table[column].notna().all(), column
    assert (tmp / "sweep" / "sweep_pareto.html").is_file()


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    from analysis.__main__ import main

    assert main(["sweep", "--checkpoint", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing" in err
    assert main(["sweep", "--checkpoint", str(tmp_path), "--grid", "0.9:0.1", "--out",
                 str(tmp_path / "o")]) == 2
    assert "theta_s <= theta_d" in capsys.readouterr().err
