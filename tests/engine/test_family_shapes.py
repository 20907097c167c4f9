"""Every shape of the Whisper family goes through the engine: 80 or 128 mel bins, the English-only,
multilingual and v3 vocabularies (51864, 51865, 51866 tokens), and encoders much deeper than their
decoders (large-v3-turbo, distil-large-v3).

The checkpoints have random weights (`tests.support.whisper_family`): what they decode is
arbitrary, so the tests check what holds for any weights: the checkpoint loads in NF4 with its own
mel bins, vocabulary and special tokens; decoding ends within its bound and is the same alone and
in a batch, with and without a LoRA adapter; and the language, task and timestamp tokens are the
ids openai-whisper numbers them with. Real weights are tested on tiny.en and base elsewhere.
"""

import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from app.engine.adaptation.rows import BASE_ROW
from app.engine.decoding import MAX_TEXT_TOKENS, BatchDecoder, DecodeRow
from app.engine.features import WINDOW_FRAMES, log_mel, pad_or_trim
from app.engine.loading import quantized_linear_count
from app.engine.tokens import SpecialTokens
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine, max_window_tokens
from tests.support.adapters import random_adapter
from tests.support.audio import sine
from tests.support.batches import transcribe_together
from tests.support.whisper_family import (
    FAMILIES,
    MEL_FILTERS,
    Family,
    build_checkpoint,
    openai_special_ids,
)

RATE = 16_000
CPU = torch.device("cpu")
TIMESTAMPED = TranscriptionOptions(language="en", with_timestamps=True)
PLAIN = TranscriptionOptions(language="en", with_timestamps=False)
LINEARS_PER_LAYER = {"encoder": 6, "decoder": 10}
"""q, k, v, out, fc1, fc2; the decoder's cross-attention adds four more."""


@pytest.fixture(scope="module", params=FAMILIES, ids=[family.name for family in FAMILIES])
def family(request: pytest.FixtureRequest) -> Family:
    chosen: Family = request.param
    return chosen


@pytest.fixture(scope="module")
def model_dir(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(family, tmp_path_factory.mktemp("family") / family.name)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> WhisperEngine:
    return WhisperEngine.load(model_dir, precision="nf4", device="cpu")


@pytest.fixture(scope="module")
def reference_engine(model_dir: Path) -> WhisperEngine:
    """The checkpoint in fp32, to compare with transformers' forward (bitsandbytes' NF4 forward
    rounds its inputs, the engine's does not)."""
    return WhisperEngine.load(model_dir, precision="fp32", device="cpu", lora=False)


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    """Two seconds of white noise: random weights decode anything to arbitrary tokens."""
    return (np.random.default_rng(0).standard_normal(2 * RATE) * 0.1).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_the_mel_filterbank_is_openai_whispers(n_mels: int) -> None:
    with np.load(MEL_FILTERS) as filters:
        reference = filters[f"mel_{n_mels}"]  # [n_mels, 201] float32
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    # transformers computes the filters in float64; librosa's float32 copy is within rounding.
    np.testing.assert_allclose(extractor.mel_filters.T, reference, rtol=2e-7, atol=1e-12)
    assert log_mel(extractor, sine(440.0, 1.0), CPU).shape[0] == n_mels


def test_the_checkpoint_loads_in_nf4_with_its_own_shape(
    family: Family, engine: WhisperEngine
) -> None:
    config = engine.loaded.model.config
    encoder_layers, decoder_layers = family.scaled_layers
    assert (config.num_mel_bins, config.vocab_size) == (family.n_mels, family.vocab_size)
    assert (config.encoder_layers, config.decoder_layers) == family.scaled_layers
    linears = (
        encoder_layers * LINEARS_PER_LAYER["encoder"]
        + decoder_layers * LINEARS_PER_LAYER["decoder"]
    )
    assert quantized_linear_count(engine.model) == linears
    assert engine.info.multilingual == family.multilingual
    assert engine.loaded.feature_extractor.feature_size == family.n_mels


def test_special_tokens_are_the_checkpoints_own(family: Family, engine: WhisperEngine) -> None:
    tokens = SpecialTokens.from_tokenizer(
        engine.loaded.tokenizer, engine.loaded.model.generation_config
    )
    ids = openai_special_ids(family)
    assert tokens.multilingual == family.multilingual
    assert (tokens.eot, tokens.sot, tokens.sot_prev) == (
        ids["<|endoftext|>"],
        ids["<|startoftranscript|>"],
        ids["<|startofprev|>"],
    )
    assert (tokens.translate, tokens.transcribe) == (ids["<|translate|>"], ids["<|transcribe|>"])
    assert (tokens.no_speech, tokens.no_timestamps, tokens.timestamp_begin) == (
        ids["<|nospeech|>"],
        ids["<|notimestamps|>"],
        ids["<|0.00|>"],
    )
    assert ids["<|30.00|>"] == family.vocab_size - 1
    if family.multilingual:
        assert tokens.language_ids == {code: ids[f"<|{code}|>"] for code in family.languages}


def test_decoding_ends_within_its_bound_and_batching_changes_nothing(
    engine: WhisperEngine, noise: np.ndarray
) -> None:
    """The same request with and without an adapter, and another one, each alone and then
    together: every result is its solo result, and the adapter changes the decode."""
    adapter = random_adapter(engine, seed=1, strength=0.05)
    tone = sine(440.0, 1.5, amplitude=0.3)
    requests = [(noise, TIMESTAMPED, None), (noise, TIMESTAMPED, adapter), (tone, PLAIN, adapter)]

    alone = [engine.transcribe(audio, options, a) for audio, options, a in requests]
    together = transcribe_together(engine, requests)

    assert together == alone
    assert alone[0] != alone[1], "the adapter must change the decode"
    for (audio, _, _), result in zip(requests, alone, strict=True):
        tokens = [token for segment in result.segments for token in segment.tokens]
        assert result.segments, "arbitrary tokens are text, not silence"
        assert len(tokens) <= max_window_tokens(len(audio) // 160)
        assert max(tokens) < engine.loaded.model.config.vocab_size


@pytest.mark.parametrize(
    "family",
    [f for f in FAMILIES if f.name in ("tiny.en", "large-v3-turbo")],  # both prefix lengths
    indirect=True,
    ids=lambda family: str(family.name),
)
def test_the_longest_prompt_and_a_decode_to_its_bound_fit_the_decoders_positions(
    engine: WhisperEngine,
) -> None:
    """A 30 s window bounds its decode at the most text tokens, and the prompt (the request's,
    or the previous windows' text in conditioned long-form) at one fewer: with the prefix the
    two would run past the decoder's positions, so the decode stops where they end."""
    long_noise = (np.random.default_rng(1).standard_normal(30 * RATE) * 0.1).astype(np.float32)
    options = TranscriptionOptions(language="en", with_timestamps=False, prompt="word " * 400)

    result = engine.transcribe(long_noise, options)

    positions = engine.loaded.model.config.max_target_positions
    tokens = [token for segment in result.segments for token in segment.tokens]
    assert tokens, "arbitrary tokens are text, not silence"
    assert len(tokens) <= positions - MAX_TEXT_TOKENS - 1  # <|startofprev|>, prompt, <|sot|>


def test_words_are_timed_with_the_checkpoints_alignment_heads(
    engine: WhisperEngine, noise: np.ndarray
) -> None:
    """Arbitrary tokens still align: every word gets a time inside the audio, in order, the same
    alone and in a batch."""
    words = TranscriptionOptions(language="en", word_timestamps=True)
    alone = engine.transcribe(noise, words)
    [batched, _] = transcribe_together(engine, [(noise, words, None), (noise[:RATE], PLAIN, None)])
    timed = [word for segment in alone.segments for word in segment.words or []]
    assert timed, "arbitrary text is words"
    assert batched == alone
    assert all(0 <= w.start <= w.end <= len(noise) / RATE + 0.02 for w in timed)
    assert [w.start for w in timed] == sorted(w.start for w in timed)


def _reference_greedy(
    engine: WhisperEngine, ids: dict[str, int], mel: torch.Tensor, prefix: list[int], limit: int
) -> list[int]:
    """Greedy decoding without timestamps through transformers' own forward, with openai-whisper's
    token ids (`ids`) and suppressed tokens (`DecodingTask._get_suppress_tokens`)."""
    model = engine.loaded.model
    steering = ("transcribe", "translate", "startoftranscript", "startofprev", "startoflm")
    suppress = [
        *model.generation_config.suppress_tokens,
        *(ids[f"<|{name}|>"] for name in (*steering, "nospeech")),
    ]
    with torch.inference_mode():
        encoded = model.model.encoder(mel[None]).last_hidden_state
        tokens: list[int] = []
        while len(tokens) < limit:
            decoder_input = torch.tensor([prefix + tokens])
            logits = model(encoder_outputs=(encoded,), decoder_input_ids=decoder_input).logits
            scores = logits[0, -1].float()
            scores[suppress] = -torch.inf
            scores[ids["<|0.00|>"] :] = -torch.inf
            if not tokens:
                scores[model.generation_config.begin_suppress_tokens] = -torch.inf
            token = int(scores.argmax())
            if token == ids["<|endoftext|>"]:
                break
            tokens.append(token)
    return tokens


def _openai_prompt(
    family: Family, ids: dict[str, int], language: str, task: str, previous: list[int]
) -> list[int]:
    """openai-whisper's `DecodingTask._get_initial_tokens` without timestamps."""
    prompt = [ids["<|startofprev|>"], *previous, ids["<|startoftranscript|>"]]
    if family.multilingual:
        prompt += [ids[f"<|{language}|>"], ids[f"<|{task}|>"]]
    return [*prompt, ids["<|notimestamps|>"]]


@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_the_prompt_uses_the_language_and_task_tokens_openai_whisper_numbers(
    family: Family,
    reference_engine: WhisperEngine,
    noise: np.ndarray,
    task: Literal["transcribe", "translate"],
) -> None:
    if task == "translate" and not family.multilingual:
        with pytest.raises(ValueError, match="translation needs a multilingual model"):
            reference_engine.open(noise, TranscriptionOptions(task="translate"))
        return
    ids = openai_special_ids(family)
    language = family.languages[-1] if family.multilingual else "en"
    previous = reference_engine.loaded.tokenizer.encode(" Hello there.", add_special_tokens=False)
    options = TranscriptionOptions(
        language=language, task=task, with_timestamps=False, prompt="Hello there."
    )

    opened = reference_engine.open(noise, options)

    assert opened is not None
    [job] = opened.jobs()
    assert job.prefix == _openai_prompt(family, ids, language, task, previous)


def test_without_a_generation_config_the_prompt_still_uses_the_checkpoints_ids(
    family: Family, model_dir: Path, noise: np.ndarray, tmp_path: Path
) -> None:
    """Checkpoints saved before transformers wrote generation configs have only the tokenizer to
    say which languages there are."""
    bare = shutil.copytree(model_dir, tmp_path / family.name)
    (bare / "generation_config.json").unlink()
    engine = WhisperEngine.load(bare, precision="fp32", device="cpu", lora=False)
    language = family.languages[-1] if family.multilingual else "en"

    opened = engine.open(noise, TranscriptionOptions(language=language, with_timestamps=False))

    assert opened is not None
    [job] = opened.jobs()
    ids = openai_special_ids(family)
    assert job.prefix == _openai_prompt(family, ids, language, "transcribe", previous=[])[1:]
    assert engine.info.multilingual == family.multilingual


def test_the_decoder_agrees_with_transformers_forward(
    family: Family, reference_engine: WhisperEngine, noise: np.ndarray
) -> None:
    ids = openai_special_ids(family)
    loaded = reference_engine.loaded
    decoder = BatchDecoder(
        loaded.model, SpecialTokens.from_tokenizer(loaded.tokenizer, loaded.model.generation_config)
    )
    content = len(noise) // 160
    mel = pad_or_trim(log_mel(loaded.feature_extractor, noise, CPU)[:, :content])
    prompt = _openai_prompt(family, ids, "en", "transcribe", previous=[])[1:]
    limit = max_window_tokens(content)

    [encoded] = decoder.encode([mel], [BASE_ROW])
    [result] = decoder.decode([DecodeRow(encoded, prompt, with_timestamps=False, max_tokens=limit)])

    assert result.tokens == _reference_greedy(reference_engine, ids, mel, prompt, limit)


def test_the_language_is_detected_among_the_checkpoints_languages(
    family: Family, reference_engine: WhisperEngine, noise: np.ndarray
) -> None:
    if not family.multilingual:
        assert reference_engine.transcribe(noise, TranscriptionOptions()).language == "en"
        return
    ids = openai_special_ids(family)
    mel = log_mel(reference_engine.loaded.feature_extractor, noise, CPU)[:, :WINDOW_FRAMES]
    model = reference_engine.loaded.model
    with torch.inference_mode():
        sot = torch.tensor([[ids["<|startoftranscript|>"]]])
        logits = model(input_features=mel[None], decoder_input_ids=sot).logits[0, -1]
    scores = {code: float(logits[ids[f"<|{code}|>"]]) for code in family.languages}

    options = TranscriptionOptions(with_timestamps=False)
    detected = reference_engine.transcribe(noise, options).language

    assert detected == max(scores, key=scores.__getitem__)
