"""Whisper's special token ids, looked up by name so English-only and multilingual vocabularies
(which number them differently) are both handled."""

import re
from dataclasses import dataclass

from transformers import GenerationConfig, WhisperTokenizerFast

__all__ = ["MULTILINGUAL_MIN_VOCAB", "SpecialTokens"]

MULTILINGUAL_MIN_VOCAB = 51865
"""openai/whisper: `is_multilingual = n_vocab >= 51865` (English-only vocabularies have 51864)."""


@dataclass(frozen=True, slots=True)
class SpecialTokens:
    eot: int
    sot: int
    sot_prev: int
    no_timestamps: int
    no_speech: int
    timestamp_begin: int
    transcribe: int | None
    translate: int | None
    language_ids: dict[str, int]
    suppress: tuple[int, ...]
    """Never emitted: non-speech symbols and the special tokens that only steer decoding."""
    begin_suppress: tuple[int, ...]
    """Not emitted as the first text token (a bare space, end of text)."""
    max_initial_timestamp_index: int
    multilingual: bool

    @classmethod
    def from_tokenizer(
        cls, tokenizer: WhisperTokenizerFast, generation: GenerationConfig
    ) -> "SpecialTokens":
        def token_id(*names: str) -> int | None:
            for name in names:
                found = tokenizer.convert_tokens_to_ids(name)
                # Unknown names map to the unk id, which for Whisper is <|endoftext|> itself.
                if isinstance(found, int) and tokenizer.convert_ids_to_tokens(found) == name:
                    return found
            return None

        def required(*names: str) -> int:
            found = token_id(*names)
            if found is None:
                raise ValueError(f"tokenizer has none of {names}")
            return found

        languages: dict[str, int] = dict(getattr(generation, "lang_to_id", None) or {})
        if not languages:  # a checkpoint saved without a full generation config
            languages = _language_tokens(tokenizer, required("<|startoftranscript|>"))
        flagged = getattr(generation, "is_multilingual", None)
        if not isinstance(flagged, bool):
            flagged = len(tokenizer) >= MULTILINGUAL_MIN_VOCAB
        multilingual = flagged and bool(languages)
        steering = [
            token_id("<|translate|>"),
            token_id("<|transcribe|>"),
            token_id("<|startoftranscript|>"),
            token_id("<|startofprev|>"),
            token_id("<|startoflm|>"),
            token_id("<|nospeech|>", "<|nocaptions|>"),
        ]
        suppress = {*(generation.suppress_tokens or []), *(t for t in steering if t is not None)}
        begin_suppress = tuple(generation.begin_suppress_tokens or [])
        return cls(
            eot=required("<|endoftext|>"),
            sot=required("<|startoftranscript|>"),
            sot_prev=required("<|startofprev|>"),
            no_timestamps=required("<|notimestamps|>"),
            no_speech=required("<|nospeech|>", "<|nocaptions|>"),
            # Older vocabularies lack the timestamp tokens by name; they follow <|notimestamps|>.
            timestamp_begin=token_id("<|0.00|>") or required("<|notimestamps|>") + 1,
            transcribe=token_id("<|transcribe|>"),
            translate=token_id("<|translate|>"),
            language_ids={name.strip("<|>"): token for name, token in languages.items()},
            suppress=tuple(sorted(suppress)),
            begin_suppress=begin_suppress,
            max_initial_timestamp_index=int(
                getattr(generation, "max_initial_timestamp_index", None) or 50
            ),
            multilingual=multilingual,
        )


def _language_tokens(tokenizer: WhisperTokenizerFast, sot: int) -> dict[str, int]:
    """`<|xx|>` -> id of the language tokens, which follow `<|startoftranscript|>` in every
    Whisper vocabulary (99 of them, or 100 from v3 on)."""
    languages: dict[str, int] = {}
    for token_id in range(sot + 1, len(tokenizer)):
        name = tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(name, str) or not re.fullmatch(r"<\|[a-z]{2,3}\|>", name):
            break
        languages[name] = token_id
    return languages
