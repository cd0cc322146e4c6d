"""Specification of the command-line tools `python -m dasg_moe.evaluate` and
`python -m dasg_moe.inspect --json` (DESIGN.md §3, §5).

Each runs in a subprocess, exactly as a user types it, on a tiny checkpoint saved in tmp_path
(tokenizer trained on a few hundred MRPC sentences, the `small_tokenizer` fixture). The runs
pay several seconds of Python, torch and `datasets` start-up each, so the `cli_runs` fixture
in conftest.py (which shows the exact command lines) starts them when the session begins and
the tests here collect them. The error path calls the same `main()` in-process, which is what
`python -m` runs, so an escaping exception fails the test just as a traceback would.
"""

from __future__ import annotations

import json

import pytest

from dasg_moe import evaluate as evaluate_cli
from dasg_moe import inspect as inspect_cli

pytestmark = pytest.mark.slow  # two subprocesses, several seconds of start-up each
EVALUATE_KEYS = {"task", "split", "accuracy", "f1", "deep_tier_rate", "mean_experts_per_token",
                 "flops_per_token", "n_examples", "n_tokens", "theta_s", "theta_d"}
INSPECT_KEYS = {"prediction", "probabilities", "truncated", "n_tokens", "theta_s", "theta_d",
                "router", "layers"}
TOKEN_KEYS = {"position", "token", "start", "end", "segment", "importance", "complexity",
              "score", "tier", "experts", "gate_weights", "flops"}


def test_evaluate_prints_the_documented_json(cli_runs):
    run = cli_runs["evaluate"].result()
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result) == EVALUATE_KEYS
    assert (result["task"], result["split"], result["n_examples"]) == ("mrpc", "validation", 50)
    assert (result["theta_s"], result["theta_d"]) == (0.2, 0.8)
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["f1"] <= 1.0
    assert 0.0 <= result["deep_tier_rate"] <= 1.0
    assert result["mean_experts_per_token"] == pytest.approx(2.0)  # top-2 in every layer
    assert result["flops_per_token"] > 0 and result["n_tokens"] > 50


def test_inspect_json_has_one_entry_per_layer_and_token(cli_runs):
    run = cli_runs["inspect"].result()
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result) == INSPECT_KEYS
    assert result["router"] == "dasg" and result["truncated"] is False
    assert set(result["probabilities"]) == {"not_equivalent", "equivalent"}
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["prediction"] in result["probabilities"]
    assert [layer["layer"] for layer in result["layers"]] == [0, 1]
    for layer in result["layers"]:
        tokens = layer["tokens"]
        assert len(tokens) == result["n_tokens"]
        assert all(set(token) == TOKEN_KEYS for token in tokens)
        assert tokens[0]["token"] == "[CLS]" and tokens[-1]["token"] == "[SEP]"
        assert {token["segment"] for token in tokens} == {1, 2}
        for token in tokens:
            assert token["tier"] in ("shallow", "deep") and len(token["experts"]) == 2
            assert sum(token["gate_weights"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("main", [evaluate_cli.main, inspect_cli.main],
                         ids=["evaluate", "inspect"])
def test_a_bad_checkpoint_path_exits_2_with_a_message_not_a_traceback(main, tmp_path, capsys):
    missing = str(tmp_path / "no-such-checkpoint")
    assert main(["--checkpoint", missing, "--text", "Hi.", "--device", "cpu"]
                if main is inspect_cli.main else ["--checkpoint", missing, "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:") and "no-such-checkpoint" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
