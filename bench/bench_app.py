"""Inspect-page latency in a real browser: a new sentence in, every plot redrawn (issue 4).

Starts the app as a user does (`app.launch.running_app`), opens the Inspect page in headless
Chromium, then for each of N MRPC validation pairs types sentence 1, submits it (Ctrl+Enter)
and measures the wall time until the routing plots carry the new tokens and Streamlit's
"running" indicator is gone. The first pair is a warm-up (model load, first draw) and is
reported separately. Prints JSON (median, p95, max, every run) and writes it to --out.

    python -m bench.bench_app --checkpoint-dir sample_checkpoints --checkpoint mrpc-dasg-minilm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from app.launch import CHROMIUM_ARGS, IDLE_JS, REPO_ROOT, running_app, wait_for_tokens
from dasg_moe.tokenizer import configured_tokenizer, encode, load_tokenizer

GLUE = REPO_ROOT.parent / "shared" / "data" / "glue"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(folder: Path, n: int, log: Path) -> dict:
    from playwright.sync_api import sync_playwright

    pairs = pd.read_parquet(GLUE / "mrpc" / "validation.parquet").head(n + 1)
    # Truncation and padding off once, as the app does; otherwise `encode` copies the
    # tokenizer for every sentence, on the same CPUs as the server being measured.
    tokenizer = configured_tokenizer(load_tokenizer(folder / "tokenizer.json"), None)
    env = {"DASG_CHECKPOINT_DIR": str(folder.parent), "DASG_DATA_DIR": str(GLUE)}
    times = []
    with running_app(env, log=log) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        start = time.perf_counter()
        first = pairs.iloc[0]
        page.goto(f"{url}/?ckpt={quote(folder.name)}&text={quote(first.sentence1)}"
                  f"&pair={quote(first.sentence2)}")
        page.wait_for_selector(".js-plotly-plot .xtick text", timeout=300_000)
        page.wait_for_function(IDLE_JS, timeout=300_000)
        cold = time.perf_counter() - start
        box = page.locator("textarea").nth(0)
        for row in pairs.iloc[1:].itertuples():
            encoded = encode(tokenizer, row.sentence1, first.sentence2)
            tokens = [t for t, s in zip(encoded.tokens, encoded.special, strict=True) if not s]
            box.fill(row.sentence1)
            start = time.perf_counter()
            box.press("Control+Enter")
            wait_for_tokens(page, tokens)
            times.append(time.perf_counter() - start)
        browser.close()
    return {"checkpoint": folder.name, "runs": len(times), "first_page_load_s": round(cold, 3),
            "median_s": round(statistics.median(times), 3),
            "p95_s": round(percentile(times, 0.95), 3), "max_s": round(max(times), 3),
            "times_s": [round(t, 3) for t in times],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average": [round(x, 2) for x in os.getloadavg()]},
            "torch_threads_env": os.environ.get("DASG_TORCH_THREADS", "1 (app default)")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", default=str(REPO_ROOT / "sample_checkpoints"))
    parser.add_argument("--checkpoint", required=True, help="folder name inside the dir")
    parser.add_argument("-n", type=int, default=10, help="timed sentences (after a warm-up)")
    parser.add_argument("--out", help="write the JSON result here too")
    args = parser.parse_args(argv)
    folder = Path(args.checkpoint_dir).resolve() / args.checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(folder, args.n, Path(tmp) / "server.log")
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
