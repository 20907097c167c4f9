"""A speaker's whole way through the page, in a real browser against a real `pqm serve`: open
the invite link, read 12 prompts into the fake microphone (a browser per prompt: Chromium plays
one file per launch), train, read the outcome, try the voice model and save a correction."""

from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from app.engine.text import wer
from tests.browser.conftest import Check, Speaker
from tests.browser.support.browser import chromium, wait_for
from tests.browser.support.page import (
    TRAINING_WITHIN_S,
    by_id,
    keep_recording,
    open_page,
    record,
    show,
    start_training,
    text_of,
    wait_for_outcome,
)
from tests.browser.support.voice import Voice

pytestmark = pytest.mark.slow

PROMPTS_READ = 12
TRIED = "Please call my sister and tell her I will be late for dinner."
CORRECTED = "Please call my sister and tell her I'll be late for dinner."

Voices = Callable[[str], Voice]


def first_prompt(speaker: Speaker, check_view: Check) -> str:
    """Looks around before enrolling; returns the first sentence the page asks for."""
    with chromium() as driver:
        open_page(driver, speaker.link)
        assert "#link=" not in driver.current_url, "the token stays out of the address bar"
        show(driver, "enrol")
        assert text_of(driver, "enrol-position") == "Sentence 1 of 30"
        check_view(driver, "03-enrol-first-sentence")
        return text_of(driver, "prompt")


def read_aloud(speaker: Speaker, voice: Voice, sentence: str) -> WebDriver:
    """A browser whose microphone says `voice`, on the Enrol view at `sentence`, recorded."""
    driver = chromium(voice.path)
    open_page(driver, speaker.link)
    show(driver, "enrol")
    assert text_of(driver, "prompt") == sentence, "the page resumes at the next unread sentence"
    record(driver, "enrol-recorder", voice.seconds)
    return driver


@dataclass
class Enrolled:
    read: list[str] = field(default_factory=list)
    """The sentences read, in order."""
    shown: dict[str, str] = field(default_factory=dict)
    """What the page said once training ended: its outcome, why, and what is in use."""


def follow_training(driver: WebDriver, check_view: Check) -> None:
    """Starts training, shows it under way (once it has an ETA), and waits for its end."""
    start_training(driver)
    outcome = by_id(driver, "job-outcome")
    wait_for(
        driver,
        lambda d: text_of(d, "job-status").endswith(" left") or outcome.is_displayed(),
        TRAINING_WITHIN_S,
    )
    check_view(driver, "05-enrol-training")
    wait_for_outcome(driver)


def enrol(speaker: Speaker, voices: Voices, check_view: Check) -> Enrolled:
    """Reads PROMPTS_READ prompts and trains."""
    sentence = first_prompt(speaker, check_view)
    enrolled = Enrolled()
    for count in range(1, PROMPTS_READ + 1):
        with read_aloud(speaker, voices(sentence), sentence) as driver:
            if count == 1:
                check_view(driver, "04-enrol-recorded")
            keep_recording(driver)
            enrolled.read.append(sentence)
            assert text_of(driver, "enrol-saved") == f"You have kept {count} of 30 sentences."
            assert text_of(driver, "enrol-position") == f"Sentence {count + 1} of 30"
            sentence = text_of(driver, "prompt")
            if count == PROMPTS_READ:
                follow_training(driver, check_view)
                check_view(driver, "06-enrol-outcome")
                for part in ("job-outcome-summary", "job-outcome-reason"):
                    enrolled.shown[part] = text_of(driver, part)
                show(driver, "overview")
                enrolled.shown["serving"] = text_of(driver, "serving")
                check_view(driver, "07-your-things-trained")
    return enrolled


def likeness(a: str, b: str) -> float:
    """How alike two texts read, letter by letter (0 to 1): robust to a word misheard as
    two, which word error rates are not."""
    return SequenceMatcher(None, a.lower(), b.lower()).ratio()


def assert_each_recording_holds_its_sentence(admin: httpx.Client, speaker: Speaker) -> None:
    """What the browser uploaded transcribes closest to the sentence it was kept for."""
    stored = admin.get(f"/v1/users/{speaker.id}/recordings").json()["data"]
    sentences = [recording["transcript"] for recording in stored]
    for recording in stored:
        audio = admin.get(f"/v1/users/{speaker.id}/recordings/{recording['id']}/audio")
        heard = admin.post(
            "/v1/audio/transcriptions",
            files={"file": ("r.flac", audio.content)},
            data={"model": "whisper-1"},
        ).json()["text"]
        closest = max(sentences, key=lambda sentence: likeness(sentence, heard))
        assert closest == recording["transcript"], (heard, recording["transcript"])


def try_and_correct(speaker: Speaker, voices: Voices, check_view: Check) -> dict[str, str]:
    """Tries a clip, corrects the text and saves it; returns the transcripts shown."""
    voice = voices(TRIED)
    with chromium(voice.path) as driver:
        open_page(driver, speaker.link)
        show(driver, "try")
        record(driver, "try-recorder", voice.seconds)
        saved = by_id(driver, "try-save")
        wait_for(driver, lambda d: saved.is_enabled() or text_of(d, "problem"))
        shown = {"base": text_of(driver, "try-base"), "mine": text_of(driver, "try-mine")}
        check_view(driver, "08-try-it")
        correction = by_id(driver, "try-correction")
        correction.clear()
        correction.send_keys(CORRECTED)
        saved.click()
        wait_for(driver, lambda d: "Saved as a correction" in text_of(d, "try-status"))
        check_view(driver, "09-try-it-saved")
        show(driver, "overview")
        newest = driver.find_element(By.CSS_SELECTOR, "#recordings tbody tr").text
        assert "Correction" in newest
        assert CORRECTED in newest
        check_view(driver, "10-your-things-corrected")
    return shown


def assert_the_page_told_the_outcome(enrolled: Enrolled, job: dict[str, Any]) -> None:
    shown = enrolled.shown
    assert shown["job-outcome-reason"] == f"How it was decided: {job['activation_reason']}."
    if job["activated"]:
        assert shown["job-outcome-summary"] == "Your new voice model is now in use."
        assert job["adapter_id"][:8] in shown["serving"]
    else:
        assert shown["job-outcome-summary"].startswith("Your voice model was trained, but it")
        assert shown["serving"].startswith("In use now: the base model.")


def test_a_speaker_enrols_tries_and_corrects_through_the_page(
    admin: httpx.Client, speaker: Speaker, voices: Voices, check_view: Check
) -> None:
    enrolled = enrol(speaker, voices, check_view)

    (job,) = admin.get(f"/v1/users/{speaker.id}/enrolments").json()["data"]
    assert job["status"] == "succeeded", job
    assert job["utterance_count"] == PROMPTS_READ
    adapters = admin.get(f"/v1/users/{speaker.id}/adapters").json()["data"]
    active = [adapter["id"] for adapter in adapters if adapter["active"]]
    assert active == ([job["adapter_id"]] if job["activated"] else [])
    assert_the_page_told_the_outcome(enrolled, job)
    assert_each_recording_holds_its_sentence(admin, speaker)
    assert len(set(enrolled.read)) == PROMPTS_READ

    shown = try_and_correct(speaker, voices, check_view)
    assert wer([TRIED], [shown["base"]]) < 0.5, shown
    if job["activated"]:
        assert wer([TRIED], [shown["mine"]]) < 0.5, shown
    else:
        assert shown["mine"].startswith("You have no voice model in use yet"), shown
    corrections = [
        recording
        for recording in admin.get(f"/v1/users/{speaker.id}/recordings").json()["data"]
        if recording["origin"] == "correction"
    ]
    assert [recording["transcript"] for recording in corrections] == [CORRECTED]
