"""Specification of multi-process training: `torchrun --nproc_per_node N -m dasg_moe.train`
runs every stage (MLM pretraining, fine-tuning, REINFORCE) under DistributedDataParallel,
each rank on its own shard of the batches, and rank 0 alone writes the checkpoint.

The end-to-end test launches a tiny from-scratch run on 2 CPU processes (gloo) exactly as a
user would, through `python -m torch.distributed.run`, with `--save-rank-weights` so that
each rank saves its weights after each stage. The ranks saw different batches, so identical
weights show that the stage kept them in sync. (Only per-stage files show it: each stage's
DDP starts by copying rank 0's weights to the other ranks.) The sharding rule itself is
checked in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dasg_moe.train import _shard, _steps_per_pass

ROOT = Path(__file__).resolve().parents[1]

# A model small enough for seconds of CPU per stage: one DASG layer, 4 + 4 experts.
TINY = ["d_model=32", "n_layers=1", "n_heads=4", "n_groups=4", "window=8",
        "group_mlp_dim=8", "n_shallow=4", "n_deep=4", "d_ff=32", "d_ff_deep=16", "max_len=64"]


def test_each_rank_takes_every_nth_batch_and_the_tail_is_dropped():
    # 50 examples in batches of 8 make 7 batches: with 2 ranks the 7th is dropped, so both
    # ranks take 3 steps per pass (a rank with one step more would hang DDP's all-reduce).
    assert _steps_per_pass(50, 8, 2) == 3
    assert list(_shard(range(7), 50, 8, rank=0, world=2)) == [0, 2, 4]
    assert list(_shard(range(7), 50, 8, rank=1, world=2)) == [1, 3, 5]
    assert list(_shard(range(7), 50, 8, rank=0, world=1)) == list(range(7))  # one process
    with pytest.raises(ValueError, match="fewer batches"):
        _steps_per_pass(8, 8, 2)


@pytest.mark.slow  # two processes, each importing torch and `datasets` and training
def test_two_gloo_ranks_end_with_identical_weights(glue_dir, tmp_path):
    out, weights = tmp_path / "ckpt", tmp_path / "ranks"
    # 56 examples = 7 batches of 8: an odd count, so the tail drop is exercised in
    # fine-tuning (3 steps per rank) and in REINFORCE; MLM has 112 texts = 14 batches.
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",  # a free port
               "-m", "dasg_moe.train", "--task", "mrpc", "--router", "dasg",
               "--out", str(out), "--data-dir", str(glue_dir), "--vocab-size", "300",
               "--pretrain-steps", "3", "--epochs", "1", "--rl-steps", "3",
               "--max-train-examples", "56", "--batch-size", "8", "--device", "cpu",
               "--no-progress", "--save-rank-weights", str(weights),
               *[arg for pair in TINY for arg in ("--set", pair)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.count("checkpoint written to") == 1  # printed by rank 0 only

    for stage in ("pretrain", "finetune", "final"):
        rank0 = load_file(weights / f"rank0-{stage}.safetensors")
        rank1 = load_file(weights / f"rank1-{stage}.safetensors")
        assert rank0.keys() == rank1.keys()
        differing = [name for name in rank0 if not torch.equal(rank0[name], rank1[name])]
        assert differing == [], f"after {stage}, the ranks disagree on {differing}"
    # The checkpoint is rank 0's final model (saved in float16).
    saved = load_file(out / "model.safetensors")
    assert saved.keys() == rank0.keys()
    assert all(torch.equal(saved[name], rank0[name].half()) for name in saved)
    # Every stage ran, and the metrics describe the whole 2-process run.
    training = json.loads((out / "metrics.json").read_text())["training"]
    assert training["hardware"].startswith("2 process(es)")
    assert training["finetune_tokens_per_s"] > 0
    assert {"rl_reward_first", "rl_reward_last"} <= training.keys()
