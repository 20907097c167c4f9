"""The Enrol view without the microphone: the user's fixed sentences, and skipping."""

import pytest

from tests.browser.conftest import Speaker
from tests.browser.support.browser import chromium
from tests.browser.support.page import by_id, open_page, show, text_of

pytestmark = pytest.mark.slow


def test_a_skipped_sentence_comes_back_and_a_reload_shows_the_same_ones(
    speaker: Speaker,
) -> None:
    with chromium() as driver:
        open_page(driver, speaker.link)
        show(driver, "enrol")
        first = text_of(driver, "prompt")
        assert text_of(driver, "enrol-saved") == "You have kept 0 of 30 sentences."
        by_id(driver, "enrol-skip").click()
        assert text_of(driver, "enrol-position") == "Sentence 2 of 30"
        assert text_of(driver, "enrol-status") == "Skipped. Sentence 2 of 30."
        second = text_of(driver, "prompt")
        assert second != first

        driver.refresh()
        open_page(driver, driver.current_url)
        show(driver, "enrol")
        assert text_of(driver, "prompt") == first, "the same sentences, from the first unread"
        for _ in range(30):
            by_id(driver, "enrol-skip").click()
        assert text_of(driver, "prompt") == first, "skipped sentences come round again"
