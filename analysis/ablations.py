"""The paper's three ablation claims, with our numbers from the shipped checkpoints.

Claims (DASG-MoE paper, as summarised in ../shared/seeds/003):
1. ADR vs random routing: removing adaptive routing (random tier and experts) drops the
   average GLUE score from 68.12 to 65.49 (Table 5).
2. Group count G of GMHA: G = 16 is best; MRPC accuracy 73.01 at G = 16 falls to 69.51 at
   G = 64 (Table 6).
3. DASG vs Switch: DASG beats the Switch baseline on 6 of 8 GLUE tasks (by up to 4.64
   points) but trails it on MRPC, 73.01 against 75.52 (§5.2), the over-routing finding.

Discovery rule (simple on purpose): every folder of `--checkpoints-dir` (default
`sample_checkpoints/`) with a `config.json` whose `task` is the task asked for. Its role
comes from config.json and the folder name:

- random: router "random";
- switch: router "switch";
- G sweep: router "dasg" and a folder name containing "-g<N>" (-g1, -g4, -g16, -g64); G is
  read from config.n_groups, the name is only the marker;
- reference: router "dasg" without "-g<N>"; with several, the one whose d_model matches the
  random / switch checkpoints, then the first by name; `--reference NAME` overrides; with
  none, the G sweep's G=16 checkpoint.

Each checkpoint is evaluated on the split at its own thresholds (cached like a sweep);
`--from-metrics` reads the accuracy / F1 in each `metrics.json` instead. Missing checkpoints
are reported as missing in the table, never an error. Accuracy is compared, as in the paper's
tables; a difference smaller than two standard errors of a difference of two accuracies on
n examples, 2 * sqrt(2 p (1 - p) / n), is called "not conclusive".
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pandas as pd

from dasg_moe.checkpoint import CheckpointError, read_config
from dasg_moe.data import get_task

from . import cli
from .report import Report
from .sweep import sweep_thresholds

HELP = "the paper's three ablation claims (ADR vs random, G sweep, DASG vs Switch), ours"
G_MARKER = re.compile(r"-g(\d+)(?!\d)")
PAPER = {
    "adr_vs_random": "avg GLUE 68.12 with ADR vs 65.49 random (-2.63 points, Table 5)",
    "g_sweep": "MRPC acc 73.01 at G=16 vs 69.51 at G=64; G=16 best (Table 6)",
    "vs_switch": "MRPC 73.01 vs Switch 75.52 (DASG worse on MRPC, §5.2); DASG better on "
                 "6 of 8 GLUE tasks, by up to 4.64 points",
}


def _reported_metrics(data: dict) -> dict:
    """The first dict holding an "accuracy" key: metrics.json itself or a dict nested in it
    (for instance under "validation"), searched breadth first."""
    queue = [data]
    while queue:
        item = queue.pop(0)
        if "accuracy" in item:
            return {k: v for k, v in item.items() if isinstance(v, int | float)}
        queue.extend(v for v in item.values() if isinstance(v, dict))
    return {}


def discover_checkpoints(root: str | Path, task: str) -> pd.DataFrame:
    """The checkpoints of `task` under `root` with their role (see the module doc): name,
    path, router, n_groups, d_model, role, and the metrics.json accuracy / f1 (NaN if none)."""
    task = get_task(task).name
    rows = []
    root = Path(root)
    for folder in sorted(p for p in root.iterdir() if (p / "config.json").is_file()) \
            if root.is_dir() else []:
        try:
            config = read_config(folder)
        except CheckpointError:
            continue
        if config.task != task:
            continue
        marker = G_MARKER.search(folder.name)
        role = {"random": "random", "switch": "switch"}.get(config.router)
        if config.router == "dasg":
            role = "G sweep" if marker else "reference"
        reported = {}
        if (folder / "metrics.json").is_file():
            try:
                reported = _reported_metrics(json.loads((folder / "metrics.json").read_text()))
            except (json.JSONDecodeError, OSError):
                reported = {}
        rows.append({"name": folder.name, "path": str(folder), "router": config.router,
                     "n_groups": config.n_groups, "d_model": config.d_model,
                     "role": role or "other",
                     "reported_accuracy": reported.get("accuracy", float("nan")),
                     "reported_f1": reported.get("f1", float("nan"))})
    return pd.DataFrame(rows, columns=["name", "path", "router", "n_groups", "d_model", "role",
                                       "reported_accuracy", "reported_f1"])


def choose_reference(found: pd.DataFrame, name: str | None = None) -> str | None:
    """Name of the reference DASG checkpoint (module doc), or None."""
    if name is not None:
        if name not in set(found["name"]):
            raise ValueError(f"reference {name!r} is not among the discovered checkpoints")
        return name
    plain = found[found["role"] == "reference"]
    if plain.empty:
        g16 = found[(found["role"] == "G sweep") & (found["n_groups"] == 16)]
        return None if g16.empty else g16["name"].iloc[0]
    sizes = set(found.loc[found["role"].isin(("random", "switch")), "d_model"])
    same = plain[plain["d_model"].isin(sizes)]
    return (same if not same.empty else plain).sort_values("name")["name"].iloc[0]


def _verdict(ours: float, other: float, n: int, expect_higher: bool) -> str:
    """Agreement of the sign of ours - other with the paper's, or not conclusive."""
    diff = ours - other
    p = (ours + other) / 2
    se = math.sqrt(2 * p * (1 - p) / n) if n else float("inf")
    if abs(diff) < 2 * se:
        return f"not conclusive (|diff| < 2 SE = {2 * se:.3f})"
    return "agrees with the paper" if (diff > 0) == expect_higher else "disagrees with the paper"


def claims_table(results: pd.DataFrame, task: str, reference: str | None) -> pd.DataFrame:
    """The three claims: claim, paper, ours, checkpoints, verdict. `results` is
    `discover_checkpoints` plus accuracy and n_examples columns (NaN where not measured)."""
    task = get_task(task).name
    by_name = results.set_index("name")
    ref = by_name.loc[reference] if reference is not None else None

    def acc(row) -> str:
        return f"{row['accuracy']:.4f}"

    def missing(what: str) -> dict:
        return {"ours": f"missing: no {what} checkpoint for {task}", "checkpoints": "",
                "verdict": "cannot tell"}

    rows = []
    # 1. ADR vs random routing
    random = results[results["role"] == "random"]
    if ref is None or random.empty:
        row = missing("reference DASG" if ref is None else "random-router")
    else:
        r = random.iloc[0]
        row = {"ours": f"acc {acc(ref)} (ADR) vs {acc(r)} (random), "
                       f"{100 * (ref['accuracy'] - r['accuracy']):+.2f} points",
               "checkpoints": f"{reference}, {r['name']}",
               "verdict": _verdict(ref["accuracy"], r["accuracy"], int(ref["n_examples"]), True)}
    rows.append({"claim": "ADR beats random routing", "paper": PAPER["adr_vs_random"], **row})
    # 2. G sweep
    sweep = results[results["role"] == "G sweep"].sort_values("n_groups")
    if sweep.empty:
        row = missing("G-sweep (-g<N>)")
    else:
        ours = ", ".join(f"G={g}: {a:.4f}" for g, a in zip(sweep["n_groups"], sweep["accuracy"],
                                                             strict=True))
        best_g = int(sweep.loc[sweep["accuracy"].idxmax(), "n_groups"])
        g16, g64 = sweep[sweep["n_groups"] == 16], sweep[sweep["n_groups"] == 64]
        if g16.empty or g64.empty:
            verdict = f"best G = {best_g}; G=16 and G=64 both needed to test the claim"
        else:
            drop = _verdict(g16["accuracy"].iloc[0], g64["accuracy"].iloc[0],
                            int(g16["n_examples"].iloc[0]), True)
            verdict = f"best G = {best_g} ({'as' if best_g == 16 else 'unlike'} the paper); " \
                      f"G=16 vs G=64: {drop}"
        row = {"ours": ours, "checkpoints": ", ".join(sweep["name"]), "verdict": verdict}
    rows.append({"claim": "G=16 groups is best; G=64 hurts", "paper": PAPER["g_sweep"], **row})
    # 3. DASG vs Switch
    switch = results[results["role"] == "switch"]
    if ref is None or switch.empty:
        row = missing("reference DASG" if ref is None else "Switch-router")
    else:
        s = switch.iloc[0]
        expect_higher = task != "mrpc"  # the paper: worse on MRPC, better on most others
        row = {"ours": f"acc {acc(ref)} (DASG) vs {acc(s)} (Switch), "
                       f"{100 * (ref['accuracy'] - s['accuracy']):+.2f} points",
               "checkpoints": f"{reference}, {s['name']}",
               "verdict": _verdict(ref["accuracy"], s["accuracy"], int(ref["n_examples"]),
                                   expect_higher)}
    rows.append({"claim": "DASG vs Switch" + (" (paper: DASG worse on MRPC)"
                                              if task == "mrpc" else " (paper: DASG better)"),
                 "paper": PAPER["vs_switch"], **row})
    return pd.DataFrame(rows, columns=["claim", "paper", "ours", "checkpoints", "verdict"])


# Command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m analysis ablations`."""
    parser.add_argument("--checkpoints-dir", default="sample_checkpoints",
                        help="folder holding the checkpoints (default sample_checkpoints)")
    parser.add_argument("--reference", help="name of the DASG checkpoint the ablations are "
                                            "compared with (default: see the discovery rule)")
    parser.add_argument("--from-metrics", action="store_true",
                        help="read each checkpoint's metrics.json instead of evaluating")
    cli.add_data_arguments(parser, task_required=True)
    cli.add_run_arguments(parser)


def evaluate_all(found: pd.DataFrame, args: argparse.Namespace, task: str) -> pd.DataFrame:
    """`found` plus accuracy, f1, deep_tier_rate, flops_per_token, n_examples, source."""
    measured = []
    dataset = None if args.from_metrics else cli.load_examples(
        task, args.split, args.data_dir, args.max_examples)
    for row in found.itertuples():
        if args.from_metrics:
            measured.append({"accuracy": row.reported_accuracy, "f1": row.reported_f1,
                             "n_examples": float("nan"), "source": "metrics.json"})
            continue
        try:
            ckpt = cli.open_checkpoint(row.path, args.device)
        except CheckpointError as err:
            measured.append({"accuracy": float("nan"), "f1": float("nan"),
                             "n_examples": float("nan"), "source": f"failed to load: {err}"})
            continue
        result = sweep_thresholds(ckpt.model, ckpt.tokenizer, task, dataset,
                                  [(ckpt.config.theta_s, ckpt.config.theta_d)],
                                  batch_size=args.batch_size, progress=not args.no_progress,
                                  cache_dir=cli.cache_dir_for(args, ckpt.path)).iloc[0]
        measured.append({**{k: result.get(k, float("nan")) for k in (
            "accuracy", "f1", "deep_tier_rate", "flops_per_token", "n_examples")},
            "source": f"evaluated on {args.split}"})
    return pd.concat([found.reset_index(drop=True), pd.DataFrame(measured)], axis=1)


def run(args: argparse.Namespace) -> Path:
    """Discover, evaluate, tabulate the claims; returns the path of report.md."""
    task = get_task(args.task).name
    found = discover_checkpoints(args.checkpoints_dir, task)
    reference = choose_reference(found, args.reference) if not found.empty else None
    results = evaluate_all(found, args, task) if not found.empty else found.assign(
        accuracy=[], f1=[], n_examples=[], source=[])
    if args.from_metrics:  # no n from metrics.json: the SE rule needs one, use the split's
        n = len(cli.load_examples(task, args.split, args.data_dir, args.max_examples))
        results["n_examples"] = n
    report = Report(args.out, f"Ablations on {task}: the paper's claims with our numbers")
    report.text(f"Checkpoints from `{args.checkpoints_dir}` ({len(found)} for {task}); "
                f"reference DASG checkpoint: `{reference}`.")
    report.table("claims", claims_table(results, task, reference), "The three claims",
                 max_chars=200)
    columns = [c for c in ("name", "role", "router", "n_groups", "accuracy", "f1",
                           "deep_tier_rate", "flops_per_token", "n_examples", "source",
                           "reported_accuracy", "reported_f1") if c in results.columns]
    report.table("checkpoints", results[columns], "Every checkpoint found")
    report.section("How checkpoints are found")
    report.text("Discovery rule" + __doc__.split("Discovery rule", 1)[1])
    return report.write()
