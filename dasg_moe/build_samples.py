"""Rebuild every shipped sample checkpoint from one command (`python -m dasg_moe.build_samples`).

Each recipe is a `python -m dasg_moe.train` command line; this module only lists them and
runs them in order, seeded, skipping folders that already exist unless `--force`. The model
cards in `sample_checkpoints/*/README.md` quote the exact command that built each one.

    python -m dasg_moe.build_samples --list
    python -m dasg_moe.build_samples --only mrpc-dasg-minilm --data-dir ../shared/data/glue
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import train
from .card import model_card
from .checkpoint import atomic_write, read_config

# Flagships: pre-training transfer from all-MiniLM-L6-v2 (DESIGN.md §4). The layout flags
# spell out `transfer.bert_config`'s defaults: the shared expert holds the pretrained FFN,
# the routed experts start from 192-unit chunks of it (see transfer.py).
_MINILM = ["--from-pretrained", "minilm", "--lr", "5e-5", "--batch-size", "32",
           "--rl-steps", "60", "--set", "shared_expert=true", "--set", "d_ff_shared=1536",
           "--set", "d_ff=192", "--set", "d_ff_deep=48"]
_MRPC_MINILM = ["--epochs", "3", "--from-pretrained", "minilm", "--lr", "1e-4", *_MINILM[4:],
                "--set", "pooling=mean"]
# Small from-scratch models for baselines and ablations: same size and budget for all.
_SMALL = ["--set", "d_model=64", "--set", "n_layers=2", "--set", "n_heads=4",
          "--set", "d_ff=128", "--set", "d_ff_deep=32", "--vocab-size", "4096",
          "--pretrain-steps", "300", "--epochs", "3", "--rl-steps", "60", "--lr", "1e-3"]

RECIPES: dict[str, list[str]] = {
    # MRPC: mean pooling (how the sentence encoder was trained) and lr 1e-4 beat [CLS] at
    # 5e-5 (0.809 / 0.870 against 0.779 / 0.853 accuracy / F1 on validation).
    "mrpc-dasg-minilm": ["--task", "mrpc", "--router", "dasg", *_MRPC_MINILM],
    "sst2-dasg-minilm": ["--task", "sst2", "--router", "dasg", "--epochs", "1", *_MINILM],
    # The paper's baseline, by the same transfer and recipe as the MRPC flagship; 8 experts of
    # 192 units like the flagship's 4 shallow + 4 deep.
    "mrpc-switch-minilm": ["--task", "mrpc", "--router", "switch", "--set", "n_shallow=8",
                           *_MRPC_MINILM],
    "mrpc-dasg-small": ["--task", "mrpc", "--router", "dasg", *_SMALL],
    "mrpc-switch-small": ["--task", "mrpc", "--router", "switch", "--set", "n_shallow=8",
                          *_SMALL],
    "mrpc-topk-small": ["--task", "mrpc", "--router", "topk", "--set", "n_shallow=8", *_SMALL],
    "mrpc-da_moe-small": ["--task", "mrpc", "--router", "da_moe", "--set", "n_shallow=8",
                          *_SMALL],
    "mrpc-mh_moe-small": ["--task", "mrpc", "--router", "mh_moe", "--set", "n_shallow=8",
                          *_SMALL],
    "mrpc-random-small": ["--task", "mrpc", "--router", "random", *_SMALL],
    # G series (paper Table 6): the same small DASG with 1, 4, 16 (= mrpc-dasg-small) and 64
    # groups over max_len 128, i.e. groups of 128, 32, 8 and 2 tokens.
    "mrpc-dasg-small-g1": ["--task", "mrpc", "--router", "dasg", "--set", "n_groups=1",
                           "--set", "window=256", *_SMALL],
    "mrpc-dasg-small-g4": ["--task", "mrpc", "--router", "dasg", "--set", "n_groups=4",
                           *_SMALL],
    "mrpc-dasg-small-g64": ["--task", "mrpc", "--router", "dasg", "--set", "n_groups=64",
                            *_SMALL],
}


def results_table(root: Path) -> str:
    """The README's table: one row per checkpoint folder under `root`, from its config.json
    and metrics.json (measured by `evaluate.py` on the validation split)."""
    header = ("| checkpoint | task | router | attention | G | params total / active | "
              "accuracy | F1 | deep-tier rate | experts / token | FFN MFLOPs / token |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for folder in sorted(p for p in root.iterdir() if (p / "metrics.json").is_file()):
        cfg = read_config(folder)
        m = json.loads((folder / "metrics.json").read_text())

        def fmt(key, digits=3, m=m):
            value = m.get(key)
            return "n/a" if value is None or value != value else f"{value:.{digits}f}"

        groups = cfg.n_groups if cfg.attention == "gmha" else "full"
        rows.append(f"| {folder.name} | {cfg.task} | {cfg.router} | {cfg.attention} | {groups} "
                    f"| {m['params_total'] / 1e6:.2f} M / {m['params_active'] / 1e6:.2f} M "
                    f"| {fmt('accuracy')} | {fmt('f1')} | {fmt('deep_tier_rate')} "
                    f"| {fmt('mean_experts_per_token', 2)} "
                    f"| {m['flops_per_token'] / 1e6:.2f} |")
    return header + "\n".join(rows)


def verify(folder: Path, data_dir: str | None, tolerance: float = 0.005) -> list[str]:
    """Re-evaluate a shipped checkpoint (as loaded: fp16 weights) and list every metric of
    its metrics.json that `evaluate` no longer reproduces within `tolerance`."""
    from .checkpoint import load_checkpoint
    from .evaluate import evaluate_model

    ckpt = load_checkpoint(folder)
    fresh = evaluate_model(ckpt.model, ckpt.tokenizer, ckpt.config.task, "validation",
                           data_dir, progress=False)
    return [f"{folder.name}: {key} {ckpt.metrics[key]:.4f} shipped, {fresh[key]:.4f} now"
            for key in ("accuracy", "f1", "matthews", "deep_tier_rate")
            if key in ckpt.metrics and ckpt.metrics[key] is not None
            and abs(ckpt.metrics[key] - fresh[key]) > tolerance]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dasg_moe.build_samples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("sample_checkpoints"))
    parser.add_argument("--data-dir", help="local GLUE Parquet folder (else $DASG_DATA_DIR)")
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), metavar="NAME")
    parser.add_argument("--force", action="store_true", help="rebuild existing checkpoints")
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    parser.add_argument("--verify", action="store_true",
                        help="re-evaluate the built checkpoints against their metrics.json")
    parser.add_argument("--cards", action="store_true",
                        help="rewrite every model card (README.md) from its config.json and "
                             "metrics.json, e.g. after the card template changed, and exit")
    parser.add_argument("--table", action="store_true",
                        help="print the results table of the built checkpoints and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(results_table(args.out_dir))
        return 0
    if args.cards:
        for folder in sorted(p for p in args.out_dir.iterdir()
                             if (p / "metrics.json").is_file()):
            metrics = json.loads((folder / "metrics.json").read_text())
            card = model_card(read_config(folder), metrics, folder.name)
            atomic_write(folder / "README.md",
                         lambda tmp, card=card: Path(tmp).write_text(card, encoding="utf-8"))
            print(f"{folder.name}: card rewritten")
        return 0
    if args.verify:
        problems = [p for name in args.only or RECIPES if (args.out_dir / name).is_dir()
                    for p in verify(args.out_dir / name, args.data_dir)]
        print("\n".join(problems) or "every shipped metrics.json reproduced within 0.5 points")
        return 1 if problems else 0
    for name in args.only or RECIPES:
        out = args.out_dir / name
        command = [*RECIPES[name], "--out", str(out)]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        if args.list:
            print(f"{name}: python -m dasg_moe.train {' '.join(command)}")
            continue
        if out.exists() and not args.force:
            print(f"{name}: exists, skipped (use --force to rebuild)")
            continue
        print(f"== {name}", flush=True)
        if train.main(command) != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
