"""Start the app as a user does (`streamlit run app/Home.py`) on a free local port, for the
real-browser test and the latency benchmark. Plain Python, no Streamlit import."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(env: Mapping[str, str] | None = None, log: Path | None = None,
                timeout: float = 120.0) -> Iterator[str]:
    """Run the app in a subprocess until the block ends; yields its base URL once the
    server answers its health check. `env` is added to this process's environment; the
    server's output goes to `log` (else it is discarded). RuntimeError with the end of the
    log when the server does not come up in `timeout` seconds."""
    port = free_port()
    out = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/Home.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log is not None else ""
                raise RuntimeError(f"streamlit did not start on {url}\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out is not subprocess.DEVNULL:
            out.close()


# Driving the running app from Playwright (the test and the benchmark share these) -----------

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOKEN_LABELS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot .xtick text'))
                                .map(t => t.textContent)"""
IDLE_JS = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"


def wait_for_tokens(page, tokens: list[str], timeout_ms: float = 120_000) -> None:
    """Block until every token is a tick label of some plot and the script has finished
    (Streamlit's running indicator gone), i.e. the new sentence's plots are drawn."""
    page.wait_for_function(
        f"""() => {{ if (!({IDLE_JS})()) return false;
                    const shown = new Set(({TOKEN_LABELS_JS})());
                    return {tokens!r}.every(t => shown.has(t)); }}""",
        timeout=timeout_ms, polling="raf")
