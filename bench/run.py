"""The benchmark suite of issue 6, one command: `python -m bench` (or `python bench/run.py`).

    python -m bench                  # full run, writes bench/results.json and bench/results.md
    python -m bench --quick          # smoke run at tiny sizes -> bench/results_quick.{json,md}
    python -m bench --only attention moe --threads 2

Sections: 1 attention (GMHA vs dense), 2 moe (every router vs dense FFN and Mixtral),
3 adaptive (deep vs shallow, threshold sweep), 4 end_to_end (latency, throughput),
5 tracing (overhead). Every figure is a ratio of medians measured side by side in one run
(see `bench/common.py`), every fast path is checked against a reference on the same inputs
before it is timed, and the environment (device, dtype, torch, CPU flags or GPU, threads,
load average) is printed beside the figures. Exit status 1 if a reference check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"  # noqa: A001

import torch  # noqa: E402

from bench import (  # noqa: E402
    bench_adaptive,
    bench_attention,
    bench_end_to_end,
    bench_moe,
    bench_tracing,
)
from bench.common import environment  # noqa: E402

SECTIONS = {"attention": bench_attention, "moe": bench_moe, "adaptive": bench_adaptive,
            "end_to_end": bench_end_to_end, "tracing": bench_tracing}
HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run at tiny sizes")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads, pinned for every measurement (default: all "
                             "logical CPUs)")
    parser.add_argument("--out-dir", type=Path, default=HERE,
                        help="folder for results(.json|.md) (default: bench/)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"quick": args.quick, "env": environment(args.threads), "sections": {}}
    started = time.perf_counter()
    for name in args.only or SECTIONS:
        t0 = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        section = SECTIONS[name].run(args.quick, args.threads)
        results["sections"][name] = {**section.to_dict(),
                                     "seconds": round(time.perf_counter() - t0, 1)}
        failed = [c["name"] for c in section.checks if not c["passed"]]
        print(f"   {len(section.checks) - len(failed)}/{len(section.checks)} reference checks "
              f"passed, {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {failed}" if failed
                                                              else ""), file=sys.stderr)
    results["env"]["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["env"]["suite_seconds"] = round(time.perf_counter() - started, 1)

    stem = "results_quick" if args.quick else "results"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(_clean(results), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(results), encoding="utf-8")
    print(render_targets(results))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    ok = all(c["passed"] for s in results["sections"].values() for c in s["checks"])
    return 0 if ok else 1


def _clean(value):
    """JSON-safe: NaN / inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------
# markdown
# ------------------------------------------------------------------------------------------

def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def _table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k != "table"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _status(target: dict) -> str:
    if target["met"] is None:
        return "not measured" if target["value"] is None else "reported"
    return "**met**" if target["met"] else "**not met**"


def render_targets(results: dict) -> str:
    rows = []
    for section in results["sections"].values():
        for t in section["targets"]:
            reported = t["note"].startswith("reported") or not math.isfinite(t["threshold"]) \
                or (t["threshold"] == 0.0 and t["better"] == "higher")
            rows.append({"target": t["name"], "value": t["value"], "unit": t["unit"],
                         "threshold": None if reported else
                         ("≥ " if t["better"] == "higher" else "≤ ") + _fmt(t["threshold"]),
                         "status": "reported" if reported and t["value"] is not None
                         else _status(t), "note": t["note"]})
    return _table(rows)


def render_markdown(results: dict) -> str:
    env = results["env"]
    out = ["# Benchmark results (issue 6)", "",
           "Generated by `python -m bench`" + (" --quick (smoke sizes: figures mean nothing)"
                                                if results["quick"] else "") + ". "
           "Every figure is a ratio of medians measured side by side in one run "
           "(`torch.utils.benchmark.Timer`, interleaved rounds after warm-up, threads pinned); "
           "absolute times are printed for context only: the machines are shared and noisy "
           "(see the load averages below). Every fast path was checked against a reference "
           "on the same inputs before it was timed.", "",
           "## Environment", "", _table([{"key": k, "value": v} for k, v in env.items()]), "",
           "## Targets", "", render_targets(results), ""]
    for section in results["sections"].values():
        out += [f"## {section['title']}", ""]
        tables: dict[str, list[dict]] = {}
        for row in section["rows"]:
            tables.setdefault(row.get("table", ""), []).append(row)
        for name, rows in tables.items():
            if name:
                out += [f"**{name}**", ""]
            out += [_table(rows), ""]
        passed = sum(c["passed"] for c in section["checks"])
        out += [f"Reference checks: {passed}/{len(section['checks'])} passed.", ""]
        failed = [c for c in section["checks"] if not c["passed"]]
        if failed:
            out += [_table(failed), ""]
        for note in section["notes"]:
            out += [f"- {note}"]
        if section["notes"]:
            out += [""]
        unmet = [t for t in section["targets"] if t["met"] is False]
        if unmet and section["profiles"]:
            out += ["Where the time goes (torch.profiler, self CPU time per call; profiler "
                    "overhead inflates ops with many internal calls):", ""]
            for name, ops in section["profiles"].items():
                out += [f"*{name}*", "", _table(ops), ""]
        out += [f"_Section time: {section['seconds']} s._", ""]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
