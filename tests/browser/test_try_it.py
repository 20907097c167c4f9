"""Try it with a file instead of the microphone; what the API refuses is said in plain words."""

from pathlib import Path

import pytest

from tests.browser.conftest import Speaker
from tests.browser.support.browser import chromium, wait_for
from tests.browser.support.page import by_id, open_page, show, text_of
from tests.support.audio import SAMPLE_RATE, speech_16k, write_wav

pytestmark = pytest.mark.slow

SAID = "The weather will be warm and sunny tomorrow."


def test_a_chosen_file_is_transcribed_by_both_models(speaker: Speaker, tmp_path: Path) -> None:
    clip = write_wav(tmp_path / "clip.wav", speech_16k(SAID), SAMPLE_RATE)
    with chromium() as driver:
        open_page(driver, speaker.link)
        show(driver, "try")
        by_id(driver, "try-file").send_keys(str(clip))
        wait_for(driver, lambda d: by_id(d, "try-save").is_enabled())
        assert "warm and sunny" in text_of(driver, "try-base").lower()
        assert text_of(driver, "try-mine").startswith("You have no voice model in use yet")
        editable = by_id(driver, "try-correction").get_attribute("value") or ""
        assert "warm and sunny" in editable.lower()


def test_a_refused_upload_is_explained(speaker: Speaker, tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are notes, not audio")
    with chromium() as driver:
        open_page(driver, speaker.link)
        show(driver, "try")
        by_id(driver, "try-file").send_keys(str(not_audio))
        problem = wait_for(driver, lambda d: text_of(d, "problem"))
        assert problem.startswith("That was not accepted: "), problem
        assert not by_id(driver, "try-save").is_enabled()
