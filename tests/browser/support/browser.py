"""Debian's headless Chromium through its chromedriver: the fake microphone, waits on the
page, axe-core and screenshots."""

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe.min.js"
WAIT_S = 60.0
"""Long enough for a loaded machine; a wait ends as soon as its condition holds."""

T = TypeVar("T")


def chromium(microphone: Path | None = None) -> WebDriver:
    """A fresh browser (nothing stored). `microphone`: a wav file that the fake microphone
    plays once from when the page opens it, then silence; access is granted without asking."""
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root (in containers)
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
    ):
        options.add_argument(argument)
    if microphone is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={microphone}%noloop")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T], within_s: float = WAIT_S) -> T:
    """Polls `condition` until it returns something truthy (WebDriverWait), and returns it."""
    result: T = WebDriverWait(driver, within_s, poll_frequency=0.2).until(condition)
    return result


AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']}).then(
  (results) => done(results.violations.map(
    (v) => ({id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' '))}))));
"""


def axe_violations(driver: WebDriver) -> list[dict[str, object]]:
    """axe-core's violations on the page as it is now (rule id, impact, offending nodes)."""
    driver.execute_script(AXE.read_text())
    violations: list[dict[str, object]] = driver.execute_async_script(AXE_RUN)
    return violations


def serious(violations: list[dict[str, object]]) -> list[dict[str, object]]:
    return [v for v in violations if v["impact"] in {"serious", "critical"}]


def screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page, not only what the window shows: the window grows to fit it first."""
    size = driver.get_window_size()
    height: int = driver.execute_script("return document.documentElement.scrollHeight;")
    chrome_height = size["height"] - driver.execute_script("return window.innerHeight;")
    driver.set_window_size(size["width"], max(size["height"], height + chrome_height))
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])
