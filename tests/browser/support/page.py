"""The speaker's page as a test drives it: by mouse or by keyboard alone."""

import re
from typing import Protocol

from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.browser.support.browser import wait_for

ELAPSED = re.compile(r"Recording: ([0-9.]+) s")
MAX_TABS = 80
TRAINING_WITHIN_S = 1800.0
"""The whole training job (gate folds and all) on a small, shared machine."""


class Hands(Protocol):
    def press(self, driver: WebDriver, element: WebElement) -> None: ...


class Mouse:
    def press(self, driver: WebDriver, element: WebElement) -> None:
        element.click()


class Keyboard:
    """Reaches a control with Tab alone, checks that its focus is visible, presses Enter."""

    def __init__(self) -> None:
        self.tabs = 0

    def press(self, driver: WebDriver, element: WebElement) -> None:
        pressed = 0
        while driver.switch_to.active_element != element:
            assert pressed < MAX_TABS, f"Tab never reached {element.get_attribute('outerHTML')}"
            ActionChains(driver).send_keys(Keys.TAB).perform()
            pressed += 1
        self.tabs += pressed
        assert focus_visible(driver), element.get_attribute("outerHTML")
        ActionChains(driver).send_keys(Keys.ENTER).perform()


def focus_visible(driver: WebDriver) -> bool:
    visible: bool = driver.execute_script(
        "const s = getComputedStyle(document.activeElement);"
        "return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0;"
    )
    return visible


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def text_of(driver: WebDriver, element_id: str) -> str:
    return by_id(driver, element_id).text


def open_page(driver: WebDriver, url: str) -> None:
    """Opens the page (an invite link signs in by itself) and waits for it to settle."""
    driver.get(url)
    overview = by_id(driver, "view-overview")
    wait_for(
        driver,
        lambda d: (
            (overview.is_displayed() and not overview.get_attribute("aria-busy"))
            or text_of(d, "problem")
            or signin_shown(d)
        ),
    )


def signin_shown(driver: WebDriver) -> bool:
    return by_id(driver, "view-signin").is_displayed()


def show(driver: WebDriver, view: str, hands: Hands | None = None) -> None:
    button = driver.find_element(By.CSS_SELECTOR, f'nav [data-view="{view}"]')
    wait_for(driver, lambda d: button.is_displayed())
    (hands or Mouse()).press(driver, button)
    section = by_id(driver, f"view-{view}")
    wait_for(driver, lambda d: section.is_displayed() and not section.get_attribute("aria-busy"))


def record(driver: WebDriver, recorder: str, seconds: float, hands: Hands | None = None) -> None:
    """Records until the page has counted `seconds`, then stops; waits for the play-back."""
    hands = hands or Mouse()
    root = by_id(driver, recorder)
    hands.press(driver, root.find_element(By.CSS_SELECTOR, '[data-part="record"]'))
    wait_for(driver, lambda d: recorded_seconds(root) >= seconds)
    hands.press(driver, root.find_element(By.CSS_SELECTOR, '[data-part="stop"]'))
    playback = root.find_element(By.CSS_SELECTOR, '[data-part="playback"]')
    wait_for(driver, lambda d: playback.is_displayed())


def recorded_seconds(recorder: WebElement) -> float:
    found = ELAPSED.search(recorder.find_element(By.CSS_SELECTOR, '[data-part="elapsed"]').text)
    return float(found.group(1)) if found else 0.0


def keep_recording(driver: WebDriver, hands: Hands | None = None) -> None:
    """Keeps the recording of the sentence shown and waits for the next sentence."""
    sentence = text_of(driver, "prompt")
    (hands or Mouse()).press(driver, by_id(driver, "enrol-keep"))
    wait_for(driver, lambda d: text_of(d, "prompt") != sentence or text_of(d, "problem"))
    assert not text_of(driver, "problem"), text_of(driver, "problem")


def start_training(driver: WebDriver, hands: Hands | None = None) -> None:
    """Starts training; waits for the page to follow the job."""
    (hands or Mouse()).press(driver, by_id(driver, "train"))
    wait_for(driver, lambda d: text_of(d, "job-status") or text_of(d, "problem"))
    assert not text_of(driver, "problem"), text_of(driver, "problem")


def wait_for_outcome(driver: WebDriver) -> None:
    outcome = by_id(driver, "job-outcome")
    wait_for(driver, lambda d: outcome.is_displayed() or text_of(d, "problem"), TRAINING_WITHIN_S)
    assert not text_of(driver, "problem"), text_of(driver, "problem")


def overflows_sideways(driver: WebDriver) -> bool:
    """True when the page scrolls sideways: content that does not reflow."""
    overflow: bool = driver.execute_script(
        "return document.documentElement.scrollWidth > document.documentElement.clientWidth;"
    )
    return overflow
