"""The web page in a real browser: headless Debian Chromium driven by Playwright (never `playwright install`).

Needs ``apt-get install chromium`` and ``pip install playwright``; skipped with the
reason when either is missing. Saves a screenshot to test-artifacts/.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'seqformer[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'seqformer[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install playwright")

from seqformer.serve.app import create_app  # noqa: E402
from seqformer.serve.settings import ServeConfig  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TEXT = "The small dog sees a red bird."

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None,
                                reason="Debian chromium not installed: apt-get install chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(translator):
    port = free_port()
    config = uvicorn.Config(create_app(translator, ServeConfig(port=port)), host="127.0.0.1", port=port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(server_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(30_000)
            page.errors = []
            page.on("pageerror", lambda err: page.errors.append(str(err)))
            page.goto(server_url + "/")
            yield page
        finally:
            browser.close()


def test_translate_shows_nbest_and_heatmap(page, translator):
    expected = translator.translate_nbest([TEXT], need_attention=True, beam_size=4, nbest=3)[0]
    sync_api.expect(page.locator("#model-info")).to_contain_text("en → fr")
    page.fill("#source", TEXT)
    page.click("#translate")
    items = page.locator("#nbest li")
    sync_api.expect(items).to_have_count(len(expected))
    assert items.nth(0).locator(".text").inner_text().strip() == expected[0].text.strip()
    assert "score" in items.nth(0).locator(".score").inner_text()
    cells = page.locator("#heatmap rect.cell")
    rows, cols = len(expected[0].attention), len(expected[0].src_tokens)
    sync_api.expect(cells).to_have_count(rows * cols)
    sync_api.expect(page.locator("#heatmap text.src-label")).to_have_count(cols)
    assert page.input_value("#layer") == "avg" and page.input_value("#head") == "avg"
    darkest = max(max(row) for row in expected[0].attention)
    sync_api.expect(page.locator("#attention-scale")).to_contain_text(f"{darkest:.3f}")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

    page.select_option("#layer", "1")  # one layer, one head
    page.select_option("#head", "2")
    sync_api.expect(cells).to_have_count(rows * cols)
    # the heatmap now shows that head: its darkest cell (the service rounds per-head weights to 4 places)
    heads = translator.translate_nbest([TEXT], need_attention=True, per_head=True, beam_size=4, nbest=3)[0][0]
    head_max = max(round(x, 4) for row in heads.head_attention[1][2] for x in row)
    assert f"{head_max:.3f}" != f"{darkest:.3f}"  # the two views differ, so showing the named one means something
    sync_api.expect(page.locator("#attention-scale")).to_contain_text(f"{head_max:.3f}")
    items.nth(1).click()  # another alternative: its heatmap replaces the first
    sync_api.expect(items.nth(1)).to_have_class("selected")
    rows_alt = len(expected[1].tokens) + 1
    sync_api.expect(cells).to_have_count(rows_alt * cols)
    page.screenshot(path=str(ARTIFACTS / "serve_page_layer1_head2.png"), full_page=True)
    assert page.errors == []


def test_sampling_from_the_page(page):
    page.fill("#source", TEXT)
    page.fill("#nbest_n", "2")
    page.check("#sampling")
    page.click("#translate")
    status = page.locator("#status")
    sync_api.expect(status).to_contain_text("2 translation(s)")  # was: Error 422 (the page sent its beam size)
    sync_api.expect(page.locator("#nbest li")).to_have_count(2)
    page.uncheck("#sampling")
    page.fill("#nbest_n", "3")


def test_error_is_shown_not_thrown(page):
    page.fill("#source", "x")
    page.fill("#beam_size", "999")
    page.click("#translate")
    sync_api.expect(page.locator("#status")).to_contain_text("beam_size")
    sync_api.expect(page.locator("#status")).to_have_class("error")
    page.fill("#beam_size", "4")
