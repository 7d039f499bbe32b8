"""The playground page in a real browser: the system's headless Chromium (Debian's `chromium` and
`chromium-driver`, which .ci/run installs) driven by selenium. Types a prompt, presses Run, waits for the
streamed text, checks it against the model's own greedy continuation, and saves a screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tests.test_serve import nanochat_run, reference, serving  # noqa: F401  (a session fixture)

pytest.importorskip("fastapi", reason='gptrs.serve needs the serve extra: pip install -e ".[serve]"')
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is a test extra: pip install -e '.[test]'"
)

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SCREENSHOT_ENV = "GPTRS_SCREENSHOT_DIR"  # where the screenshot goes (default: the test's tmp_path)


def _system_chromium() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no system Chromium + chromedriver (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def browser() -> object:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = _system_chromium()
    options = Options()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1000,760",
    ):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield chrome
    chrome.quit()


def test_playground_streams_the_models_text(browser: object, nanochat_run: Path, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    prompt = "def __init__(self"
    expected = reference(nanochat_run, prompt, 40)
    with serving(nanochat_run) as server:
        b: object = browser
        b.get(server.url + "/")  # type: ignore[attr-defined]
        wait = WebDriverWait(b, 30)
        wait.until(lambda d: "model: nanochat" in d.find_element(By.ID, "model").text)
        for field, value in (("prompt", prompt), ("temperature", "0"), ("max_tokens", "40")):
            box = b.find_element(By.ID, field)  # type: ignore[attr-defined]
            box.clear()
            box.send_keys(value)
        b.find_element(By.ID, "run").click()  # type: ignore[attr-defined]
        wait.until(lambda d: "tokens/s" in d.find_element(By.ID, "stats").text)
        shown = b.find_element(By.ID, "completion").text  # type: ignore[attr-defined]
        stats = b.find_element(By.ID, "stats").text  # type: ignore[attr-defined]
        shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path) / "playground.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        b.save_screenshot(str(shot))  # type: ignore[attr-defined]
        assert shot.stat().st_size > 1000
    # The page shows the text as the browser lays it out (whitespace at the ends trimmed).
    assert shown.strip() == expected.strip() and shown.strip(), (shown, expected)
    assert "error" not in stats and "finish: " in stats, stats
