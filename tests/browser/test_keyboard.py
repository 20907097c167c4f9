"""The page by keyboard alone, in a window as narrow as a 1280-pixel one at 200% zoom: every
control reached with Tab shows its focus, nothing scrolls sideways, and an enrolment (four
prompts, the service's minimum here, then training) completes without a mouse."""

from collections.abc import Callable

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.browser.conftest import Check, Speaker
from tests.browser.support.browser import chromium
from tests.browser.support.page import (
    Keyboard,
    by_id,
    keep_recording,
    open_page,
    overflows_sideways,
    record,
    show,
    start_training,
    text_of,
    wait_for_outcome,
)
from tests.browser.support.voice import Voice

pytestmark = pytest.mark.slow

PROMPTS_READ = 4
ZOOMED_WIDTH = 640
"""CSS pixels across a 1280-pixel window at 200% zoom."""


def zoomed(driver: WebDriver) -> WebDriver:
    driver.set_window_size(ZOOMED_WIDTH, 1100)
    return driver


def test_an_enrolment_by_keyboard_alone_at_200_percent(
    speaker: Speaker, voices: Callable[[str], Voice], check_view: Check
) -> None:
    keyboard = Keyboard()
    with zoomed(chromium()) as driver:
        open_page(driver, speaker.link)
        assert not overflows_sideways(driver)
        show(driver, "enrol", keyboard)
        assert not overflows_sideways(driver)
        sentence = text_of(driver, "prompt")
    for count in range(1, PROMPTS_READ + 1):
        voice = voices(sentence)
        with zoomed(chromium(voice.path)) as driver:
            open_page(driver, speaker.link)
            show(driver, "enrol", keyboard)
            record(driver, "enrol-recorder", voice.seconds, keyboard)
            keep_recording(driver, keyboard)
            assert text_of(driver, "enrol-saved") == f"You have kept {count} of 30 sentences."
            sentence = text_of(driver, "prompt")
            if count == PROMPTS_READ:
                start_training(driver, keyboard)
                wait_for_outcome(driver)
                assert by_id(driver, "job-outcome-summary").text
                assert not overflows_sideways(driver)
                check_view(driver, "11-keyboard-200-percent-outcome")
                show(driver, "try", keyboard)
                assert not overflows_sideways(driver)
    assert keyboard.tabs > 0
