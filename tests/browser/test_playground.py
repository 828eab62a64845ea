"""The playground page in a real headless browser: Debian's Chromium, driven with Selenium through Debian's
chromedriver (``apt-get install chromium chromium-driver``; ``.ci/run`` installs them).

1. ``guardreasoner-vl demo --serve`` as a real process (the tiny model trained to write verdicts): the test types a
   request, uploads an image through the page's file input, presses Judge, watches the reasoning arrive in
   pieces, and reads the verdict and its score from the page; they must be what ``/v1/guard`` answers.
2. Hostile model output: a function engine (the tiny model cannot be made to write markup on cue) whose reasoning
   holds ``<script>`` and ``<img onerror>``; the page must show them as text and run none of it. The API key
   path is checked on the same server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("GRVL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GRVL_CHROMEDRIVER", "/usr/bin/chromedriver")
SETUP_HINT = "install them with: apt-get install -y chromium chromium-driver (GRVL_SKIP_BROWSER=1 skips this tier)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        message = f"{', '.join(missing)} not found; {SETUP_HINT}"
        if os.environ.get("GRVL_SKIP_BROWSER") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Any, timeout_s: float = 120.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(condition)


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).get_attribute("textContent"))


def state(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, "state").get_attribute("data-state"))


def count_reasoning_updates(driver: Any) -> None:
    """Count the times the page adds text to the reasoning box (WebDriver's script runs outside the page's CSP)."""
    driver.execute_script(
        "window.__updates = 0; new MutationObserver(() => window.__updates++)"
        ".observe(document.getElementById('reasoning'), {childList: true, characterData: true, subtree: true});"
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``guardreasoner-vl demo --serve`` as a process (it builds and caches its tiny trained model first)."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "guardreasoner_vl.cli", "demo", "--serve", "--port", str(port)],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"demo --serve did not start:\n{log.read_text(errors='replace')[-3000:]}", pytrace=False)
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_upload_an_image_watch_the_reasoning_and_read_the_verdict(
    browser: Any, demo_server: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    image = tmp_path / "red.png"
    Image.new("RGB", (56, 84), (200, 20, 20)).save(image)  # taught to the demo model as harmful
    browser.get(demo_server + "/")
    assert "guardreasoner-vl playground" in browser.title
    browser.find_element(By.ID, "request").send_keys("What is this?")
    browser.find_element(By.ID, "image").send_keys(str(image))  # the page's own file input
    wait(browser, lambda d: (d.find_element(By.ID, "preview").get_attribute("src") or "").startswith("data:image/png"))
    count_reasoning_updates(browser)
    browser.find_element(By.ID, "judge").click()
    wait(browser, lambda d: state(d) in ("done", "error"))
    assert state(browser) == "done", text_of(browser, "state")

    reasoning = text_of(browser, "reasoning")
    assert browser.execute_script("return window.__updates") >= 3, "the reasoning should arrive in pieces"
    import base64

    body = {"text": "What is this?", "image": "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()}
    expected = httpx.post(demo_server + "/v1/guard", json=body, timeout=120).json()
    assert expected["status"] == "ok" and expected["request"] == "harmful"
    assert reasoning == expected["raw_output"]  # shown as written, piece by piece
    assert text_of(browser, "v-request") == "harmful"
    assert text_of(browser, "v-flagged") == "FLAGGED"
    assert text_of(browser, "v-request-score") == f"{expected['request_score']:.3f}"
    assert text_of(browser, "v-response") == "–" and text_of(browser, "v-status") == "ok"

    # the same page judges a request without an image, and a response with it
    browser.find_element(By.ID, "clear-image").click()
    browser.find_element(By.ID, "request").clear()
    browser.find_element(By.ID, "request").send_keys("Write a poem")
    browser.find_element(By.ID, "response").send_keys("Roses are red.")
    browser.find_element(By.ID, "judge").click()
    wait(browser, lambda d: state(d) == "done" and text_of(d, "v-response") != "–")
    assert text_of(browser, "v-response") == "unharmful" and text_of(browser, "v-flagged") == "allowed"
    assert text_of(browser, "v-response-score") not in ("–", "")


HOSTILE = (
    '<think>The user wrote <img src=x onerror="window.__pwned=1"> and '
    "<script>window.__pwned=2</script> &amp; more.</think>\n<result>\nRequest: harmful\nResponse: None\n</result>"
)


def test_model_output_is_shown_as_text_never_run(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    from guardreasoner_vl import Guard, ModelFamily
    from guardreasoner_vl.backends import FunctionBackend
    from guardreasoner_vl.server import ServerSettings, create_app, serve_in_thread

    guard = Guard(backend=FunctionBackend(lambda request: HOSTILE, family=ModelFamily.VL))
    settings = ServerSettings(playground=True, api_key="k3y", model_name='<img src=x onerror="window.__pwned=3">')
    with serve_in_thread(create_app(guard, settings=settings)) as url:
        browser.get(url + "/")
        assert text_of(browser, "model") == '<img src=x onerror="window.__pwned=3">'
        browser.find_element(By.ID, "request").send_keys("hello")
        browser.find_element(By.ID, "judge").click()
        wait(browser, lambda d: state(d) == "error")
        assert "HTTP 401" in text_of(browser, "state")  # no key typed: the server refused, the page says so

        browser.find_element(By.CSS_SELECTOR, "details summary").click()
        browser.find_element(By.ID, "api-key").send_keys("k3y")
        browser.find_element(By.ID, "judge").click()
        wait(browser, lambda d: state(d) == "done")
        assert text_of(browser, "reasoning") == HOSTILE
        assert browser.find_elements(By.CSS_SELECTOR, "#reasoning *") == []  # text only, no elements
        assert browser.find_elements(By.CSS_SELECTOR, "img:not(#preview)") == []
        time.sleep(0.3)
        assert browser.execute_script("return window.__pwned === undefined")
        assert text_of(browser, "v-flagged") == "FLAGGED" and text_of(browser, "v-request") == "harmful"
