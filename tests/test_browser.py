"""The app in a real browser: `streamlit run app/Home.py` on a free port, driven by Playwright
in headless Chromium (Debian's `chromium`, installed by `.ci/run`).

The test pastes a sentence on the Inspect page, waits for the plots to redraw and checks that
the sentence's tokens (as the checkpoint's own tokenizer cuts them) are the labels of the
routing plot, that no page shows a traceback, and saves a screenshot of each page under the
test's temporary folder. With DASG_SCREENSHOT_DIR set, the screenshots also go there (the
README's come from `DASG_SCREENSHOT_DIR=docs/screenshots pytest -m browser`), and the
Thresholds and Diagnostics pages first run their sweep / report so the shots show results.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
from app_support import GLUE_DIR, app_checkpoint_root, router_of, sample_names  # noqa: F401

from app.launch import CHROMIUM_ARGS, IDLE_JS, TOKEN_LABELS_JS, running_app, wait_for_tokens
from dasg_moe.tokenizer import encode, load_tokenizer

pytestmark = pytest.mark.browser
TEXT = "The central bank raised interest rates again on Thursday."
PAIR = "On Thursday the central bank increased rates once more."


@pytest.fixture(scope="module")
def server(app_checkpoint_root, tmp_path_factory):  # noqa: F811
    """The app, started as a user starts it, on a free port; yields its base URL."""
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    env = {"DASG_CHECKPOINT_DIR": str(app_checkpoint_root), "DASG_DATA_DIR": str(GLUE_DIR),
           "DASG_ANALYSIS_CACHE": str(tmp_path_factory.mktemp("analysis-cache"))}
    with running_app(env, log=tmp_path_factory.mktemp("streamlit") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"),
                                     args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def tokens_of(folder: Path, text: str, pair: str) -> list[str]:
    encoded = encode(load_tokenizer(folder / "tokenizer.json"), text, pair)
    return [t for t, special in zip(encoded.tokens, encoded.special, strict=True) if not special]


def wait_for_plots(page, timeout: float = 120_000) -> None:
    page.wait_for_selector(".js-plotly-plot .xtick text", timeout=timeout)
    page.wait_for_function(IDLE_JS, timeout=timeout)


def no_traceback(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.content()[-2000:]


def shoot(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    target = os.environ.get("DASG_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def test_pasted_sentence_is_routed_and_drawn(server, browser, app_checkpoint_root,  # noqa: F811
                                             tmp_path):
    names = sample_names(app_checkpoint_root)
    name = next((n for n in names if router_of(app_checkpoint_root / n) == "dasg"), names[0])
    page = browser.new_page(viewport={"width": 1400, "height": 2200})
    page.goto(f"{server}/?ckpt={quote(name)}")  # Inspect is the default page
    wait_for_plots(page)
    no_traceback(page)

    boxes = page.locator("textarea")
    boxes.nth(0).fill(TEXT)
    boxes.nth(1).fill(PAIR)
    boxes.nth(1).press("Control+Enter")
    expected = tokens_of(app_checkpoint_root / name, TEXT, PAIR)
    wait_for_tokens(page, expected)
    no_traceback(page)
    labels = page.evaluate(TOKEN_LABELS_JS)
    assert set(expected) <= set(labels)
    assert "thursday" in "".join(t.removeprefix("##") for t in labels)
    shot = shoot(page, "inspect", tmp_path)
    assert shot.stat().st_size > 10_000


def test_every_page_renders_without_a_traceback(server, browser, app_checkpoint_root,  # noqa: F811
                                                tmp_path):
    names = sample_names(app_checkpoint_root)
    name = next((n for n in names if router_of(app_checkpoint_root / n) == "dasg"), names[0])
    full = bool(os.environ.get("DASG_SCREENSHOT_DIR"))
    page = browser.new_page(viewport={"width": 1400, "height": 2200})
    query = f"ckpt={quote(name)}&text={quote(TEXT)}&pair={quote(PAIR)}"
    for path, button in (("compare", None), ("thresholds", "Run sweep"),
                         ("diagnostics", "Run the report")):
        page.goto(f"{server}/{path}?{query}")
        page.wait_for_selector("h1", timeout=120_000)
        if path != "diagnostics":
            wait_for_plots(page)
        if full and button:
            page.get_by_role("button", name=button).click()
            page.wait_for_selector(".js-plotly-plot >> nth=1", timeout=300_000)
            wait_for_plots(page, 300_000)
        no_traceback(page)
        shoot(page, path, tmp_path)
