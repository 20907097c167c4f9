"""Sequential long-form conditioned on the previous windows' text (Whisper's default, an option
here: `LongformPolicy.condition_on_previous_text`)."""

import itertools
from pathlib import Path

import pytest

from app.engine.decoding import MAX_TEXT_TOKENS
from app.engine.text import wer
from app.engine.tokens import SpecialTokens
from app.engine.types import Segment, TranscriptionOptions
from app.engine.whisper import (
    PROMPT_RESET_TEMPERATURE,
    SCANNING,
    LongformPolicy,
    WhisperEngine,
    WindowJob,
    next_context,
)
from tests.support.speech import HOUSEHOLD, read_household

GREEDY = TranscriptionOptions(language="en", with_timestamps=False)


def _segment(tokens: list[int]) -> Segment:
    return Segment(0, 0, 0.0, 1.0, "", tokens, 0.0, -0.1, 1.0, 0.0)


def test_the_context_grows_by_each_windows_tokens_is_bounded_and_resets_after_a_hot_window() -> (
    None
):
    context = next_context([], [_segment([1, 2]), _segment([3])], temperature=0.0)
    assert context == [1, 2, 3]
    assert next_context(context, [_segment([4])], PROMPT_RESET_TEMPERATURE) == [1, 2, 3, 4]
    assert next_context(context, [_segment([4])], PROMPT_RESET_TEMPERATURE + 0.1) == []
    long = next_context([], [_segment(list(range(1000)))], 0.0)
    assert long == list(range(1000))[-(MAX_TEXT_TOKENS - 1) :]


@pytest.fixture(scope="module")
def conditioned_engine(tiny_en_dir: Path) -> WhisperEngine:
    policy = LongformPolicy(condition_on_previous_text=True)
    return WhisperEngine.load(
        tiny_en_dir, precision="nf4", device="cpu", threads=2, longform=policy
    )


def special(engine: WhisperEngine) -> SpecialTokens:
    loaded = engine.loaded
    return SpecialTokens.from_tokenizer(loaded.tokenizer, loaded.model.generation_config)


def _prefixes(engine: WhisperEngine, options: TranscriptionOptions) -> tuple[list[list[int]], str]:
    """The prefix of every window a request decodes, and its text."""
    task = engine.open(read_household().audio, options)
    assert task is not None
    jobs: list[WindowJob] = []  # a job stays in view for every round of its decode
    while not task.done:
        if task.job is not None and task.job is not SCANNING:
            jobs += [job for job in task.jobs() if not any(job is seen for seen in jobs)]
        engine.run_round([task])
    return [job.prefix for job in jobs], task.outcome().text


def test_each_window_after_the_first_is_prefixed_with_the_text_before_it(
    conditioned_engine: WhisperEngine,
) -> None:
    tokens = special(conditioned_engine)
    tokenizer = conditioned_engine.loaded.tokenizer

    prefixes, text = _prefixes(conditioned_engine, GREEDY)

    assert len(prefixes) >= 2
    assert prefixes[0][0] == tokens.sot
    for earlier, prefix in itertools.pairwise(prefixes):
        assert prefix[0] == tokens.sot_prev
        carried = tokenizer.decode(
            [t for t in prefix[1 : prefix.index(tokens.sot)] if t < tokens.eot]
        )
        assert carried.strip()
        assert carried.strip() in text
        assert len(prefix) > len(earlier) or len(prefix) >= MAX_TEXT_TOKENS
    assert wer([" ".join(s for s, _ in HOUSEHOLD)], [text]) <= 0.25


def test_the_requests_prompt_stays_first_in_a_conditioned_prefix(
    conditioned_engine: WhisperEngine,
) -> None:
    tokens = special(conditioned_engine)
    prompt = conditioned_engine.loaded.tokenizer.encode(
        " Household chores.", add_special_tokens=False
    )
    options = TranscriptionOptions(language="en", with_timestamps=False, prompt="Household chores.")

    prefixes, _ = _prefixes(conditioned_engine, options)

    assert all(p[: 1 + len(prompt)] == [tokens.sot_prev, *prompt] for p in prefixes)
    assert len(prefixes[1]) > len(prefixes[0])


def test_without_the_option_every_window_has_the_same_prefix(nf4_engine: WhisperEngine) -> None:
    prefixes, _ = _prefixes(nf4_engine, GREEDY)

    assert len(prefixes) >= 2
    assert all(prefix == prefixes[0] for prefix in prefixes)
