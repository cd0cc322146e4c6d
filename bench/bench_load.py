"""Several users at once: N browser sessions paste sentences on the Inspect page together.

Starts the app as a user does (`app.launch.running_app`) on a free loopback port and opens
one warm-up page (model load, first draw; reported as `cold_first_page_s`). Then N sessions,
each in its own browser context (own cookies, own Streamlit session), open the Inspect page
at the same time (`page_load_s`). In each of `--rounds` rounds every session types a
different MRPC validation sentence into the first box; the sessions wait for one another
and press Ctrl+Enter together, and each measures the wall time until its own plots carry
its sentence's tokens and Streamlit's "running" indicator is gone: the same end point as
`bench.bench_app`, which measures one session alone.

Errors are counted, not hidden: a timeout, a traceback or an `st.error` box on a page, or
an uncaught JavaScript error, each with the session and round. A session that fails keeps
its place in the later rounds (so the others still start together) but is not timed.

Results: p50 / p95 / max over all (session, round) times, per-session times, errors, and
the machine's load average, as JSON (`--out`, default bench/results_load.json) and a short
Markdown snippet (`--md`, default beside the JSON). Timing is wall time on whatever else the
machine runs; read the load average next to the figures.

    python -m bench.bench_load --checkpoint mrpc-dasg-small -n 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from app.launch import CHROMIUM_ARGS, IDLE_JS, REPO_ROOT, TOKEN_LABELS_JS, running_app
from bench.common import percentile
from dasg_moe.tokenizer import encode, load_tokenizer

HERE = Path(__file__).resolve().parent
GLUE = REPO_ROOT.parent / "shared" / "data" / "glue"
MAX_SESSIONS = 16  # each session is a Chromium renderer and a Streamlit script thread
MAX_ROUNDS = 20  # 16 sessions x 21 sentences fit in MRPC's 408 validation pairs
PLOTS = ".js-plotly-plot .xtick text"
# What a user would see as a failure: a traceback or an st.error box.
ERROR_BOXES = '[data-testid="stException"], [data-testid="stAlertContentError"]'


@dataclass
class Session:
    """One simulated user: the sentences it pastes and what it measured."""

    index: int
    first: str  # sentence 1 when the page opens
    pair: str  # sentence 2, the same throughout
    sentences: list[str]  # sentence 1 of each round
    tokens: list[list[str]]  # the tokens each round's plots must show
    page_load_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def bounded_sessions(value: str) -> int:
    n = int(value)
    if not 1 <= n <= MAX_SESSIONS:
        raise argparse.ArgumentTypeError(f"-n must be between 1 and {MAX_SESSIONS}, got {n}")
    return n


def plan(folder: Path, n: int, rounds: int) -> tuple[pd.Series, list[Session]]:
    """The warm-up row and N sessions, each on its own MRPC validation pairs, no sentence
    used twice. A round's sentence must have a token the page did not show before it
    (else its plots would "appear" before the model ran): rows that do not are skipped."""
    rows = pd.read_parquet(GLUE / "mrpc" / "validation.parquet")
    tokenizer = load_tokenizer(folder / "tokenizer.json")

    def shown(text: str, pair: str) -> list[str]:
        encoded = encode(tokenizer, text, pair)
        return [t for t, special in zip(encoded.tokens, encoded.special, strict=True)
                if not special]

    unused = iter(rows.itertuples())
    warmup = next(unused)
    sessions = []
    for i in range(n):
        own = next(unused)
        session = Session(i, own.sentence1, own.sentence2, [], [])
        before = set(shown(own.sentence1, own.sentence2))
        while len(session.sentences) < rounds:
            text = next(unused).sentence1
            tokens = shown(text, own.sentence2)
            if set(tokens) - before:
                session.sentences.append(text)
                session.tokens.append(tokens)
                before = set(tokens)
        sessions.append(session)
    return pd.Series(warmup._asdict()), sessions


def page_url(base: str, checkpoint: str, text: str, pair: str) -> str:
    return f"{base}/?ckpt={quote(checkpoint)}&text={quote(text)}&pair={quote(pair)}"


async def wait_for_plots(page, timeout_ms: float) -> None:
    await page.wait_for_selector(PLOTS, timeout=timeout_ms)
    await page.wait_for_function(IDLE_JS, timeout=timeout_ms)


async def wait_for_tokens(page, tokens: list[str], timeout_ms: float) -> None:
    """Async twin of `app.launch.wait_for_tokens`: every token is a tick label of some plot
    and the script has finished."""
    await page.wait_for_function(
        f"""() => {{ if (!({IDLE_JS})()) return false;
                    const shown = new Set(({TOKEN_LABELS_JS})());
                    return {tokens!r}.every(t => shown.has(t)); }}""",
        timeout=timeout_ms, polling="raf")


async def error_boxes(page) -> str | None:
    """The text of the first traceback or error box on the page, if any."""
    boxes = page.locator(ERROR_BOXES)
    if await boxes.count():
        return (await boxes.first.inner_text())[:300]
    return None


async def run_session(browser, base: str, checkpoint: str, session: Session,
                      start_line: asyncio.Barrier, timeout_ms: float) -> None:
    """Open the page, then in each round paste, wait for the others, submit and time.
    Every await but the start line is guarded, so one failing session cannot stall the
    others at the start line."""
    context = box = None
    try:
        context = await browser.new_context(viewport={"width": 1400, "height": 1600})
        page = await context.new_page()
        page.on("pageerror", lambda err: session.errors.append(f"javascript: {err}"))
        start = time.perf_counter()
        await page.goto(page_url(base, checkpoint, session.first, session.pair))
        await wait_for_plots(page, timeout_ms)
        session.page_load_s = time.perf_counter() - start
        box = page.locator("textarea").nth(0)
    except Exception as err:  # recorded; the session sits out the rounds
        session.errors.append(f"page load: {type(err).__name__}: {str(err)[:200]}")
    for k, (sentence, tokens) in enumerate(zip(session.sentences, session.tokens,
                                                strict=True)):
        ready = False
        if box is not None:
            try:
                await box.fill(sentence)
                ready = True
            except Exception as err:
                session.errors.append(f"round {k}: paste: {type(err).__name__}: "
                                      f"{str(err)[:200]}")
        await start_line.wait()  # every session submits at the same moment
        if not ready:
            continue
        try:
            start = time.perf_counter()
            await box.press("Control+Enter")
            await wait_for_tokens(page, tokens, timeout_ms)
            elapsed = time.perf_counter() - start
            shown = await error_boxes(page)
            if shown:
                session.errors.append(f"round {k}: error on the page: {shown}")
            else:
                session.times_s.append(elapsed)
        except Exception as err:
            session.errors.append(f"round {k}: {type(err).__name__}: {str(err)[:200]}")
    if context is not None:
        await context.close()


async def drive(base: str, checkpoint: str, warmup: pd.Series, sessions: list[Session],
                timeout_ms: float) -> float:
    """The warm-up page, then all sessions at once; returns the warm-up page's load time."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"),
                                          args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 1600})
        start = time.perf_counter()
        await page.goto(page_url(base, checkpoint, warmup.sentence1, warmup.sentence2))
        await wait_for_plots(page, timeout_ms)
        cold = time.perf_counter() - start
        await page.close()
        start_line = asyncio.Barrier(len(sessions))
        await asyncio.gather(*(run_session(browser, base, checkpoint, s, start_line,
                                           timeout_ms) for s in sessions))
        await browser.close()
    return cold


def summary(values: list[float]) -> dict:
    if not values:
        return {"p50_s": None, "p95_s": None, "max_s": None}
    return {"p50_s": round(statistics.median(values), 3),
            "p95_s": round(percentile(values, 0.95), 3), "max_s": round(max(values), 3)}


def measure(folder: Path, n: int, rounds: int, timeout_s: float, log: Path) -> dict:
    if shutil.which("chromium") is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    warmup, sessions = plan(folder, n, rounds)
    env = {"DASG_CHECKPOINT_DIR": str(folder.parent), "DASG_DATA_DIR": str(GLUE),
           "DASG_ANALYSIS_CACHE": str(log.parent / "analysis-cache")}
    load_before = os.getloadavg()
    started = time.perf_counter()
    with running_app(env, log=log) as base:
        cold = asyncio.run(drive(base, folder.name, warmup, sessions, timeout_s * 1000))
    times = [t for s in sessions for t in s.times_s]
    loads = [s.page_load_s for s in sessions if s.page_load_s is not None]
    errors = [f"session {s.index}: {e}" for s in sessions for e in s.errors]
    return {
        "checkpoint": folder.name, "sessions": n, "rounds": rounds,
        "submits": n * rounds, "timed": len(times), "errors": len(errors),
        **summary(times),
        "page_load": summary(loads), "cold_first_page_s": round(cold, 3),
        "per_session": [{"session": s.index, "page_load_s": None if s.page_load_s is None
                         else round(s.page_load_s, 3),
                         "times_s": [round(t, 3) for t in s.times_s], "errors": s.errors}
                        for s in sessions],
        "error_messages": errors,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "niceness": os.nice(0)},
        "torch_threads_env": os.environ.get("DASG_TORCH_THREADS", "1 (app default)"),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def markdown(result: dict) -> str:
    """A short snippet for a README or an issue."""
    fmt = lambda v: "n/a" if v is None else f"{v:.2f} s"  # noqa: E731
    load = result["machine"]["load_average_before"]
    lines = [
        f"**Load test** (`python -m bench.bench_load --checkpoint {result['checkpoint']} "
        f"-n {result['sessions']}`, {result['date_utc']} UTC)",
        "",
        "| sessions | submits | p50 | p95 | max | errors | page load p50 | first page (cold) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result['sessions']} | {result['submits']} | {fmt(result['p50_s'])} | "
        f"{fmt(result['p95_s'])} | {fmt(result['max_s'])} | {result['errors']} | "
        f"{fmt(result['page_load']['p50_s'])} | {fmt(result['cold_first_page_s'])} |",
        "",
        f"Time from Ctrl+Enter to the Inspect plots showing the new sentence, all sessions "
        f"submitting together; {result['machine']['cpus']} CPUs, load average "
        f"{load[0]:.2f} at the start.",
    ]
    lines += [f"- {message}" for message in result["error_messages"][:10]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", default=str(REPO_ROOT / "sample_checkpoints"))
    parser.add_argument("--checkpoint", required=True, help="folder name inside the dir")
    parser.add_argument("-n", type=bounded_sessions, default=4,
                        help=f"concurrent sessions, 1 to {MAX_SESSIONS} (default 4)")
    parser.add_argument("--rounds", type=int, default=3,
                        help=f"sentences each session submits, 1 to {MAX_ROUNDS} (default 3)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds one page load or one submit may take (default 180)")
    parser.add_argument("--out", type=Path, default=HERE / "results_load.json")
    parser.add_argument("--md", type=Path, help="Markdown snippet (default: --out with .md)")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be between 1 and {MAX_ROUNDS}")
    folder = Path(args.checkpoint_dir).resolve() / args.checkpoint
    if not (folder / "config.json").is_file():
        parser.error(f"{folder} is not a checkpoint folder (no config.json)")
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(folder, args.n, args.rounds, args.timeout, Path(tmp) / "server.log")
    snippet = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.md or args.out.with_suffix(".md")).write_text(snippet, encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "per_session"}, indent=2))
    print(snippet)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
