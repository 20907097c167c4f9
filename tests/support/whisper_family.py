"""Random-weight checkpoints shaped like each kind of Whisper, and the family's facts to check
them against.

A checkpoint is a transformers Whisper directory as the Hugging Face hub holds them
(`config.json`, `generation_config.json` with alignment heads and language and task ids, tokenizer
files, `preprocessor_config.json`, `model.safetensors`) with random weights. Mel bins, vocabulary
and special tokens are the real ones; the width is scaled down to `D_MODEL` with `HEADS` heads, and
the layer counts keep the real ratio of encoder to decoder layers (`Family.scaled_layers`).

The tokenizers derive from the bundled models' (tiny.en's for English-only, base's for the
multilingual vocabularies), as Whisper's own vocabularies relate: English-only adds the 1501
timestamp tokens after `<|notimestamps|>`; v3 inserts `<|yue|>` after the last of base's 99
languages, shifting every later special token by one.

The facts come from openai-whisper 20250625 (the PyPI sdist `openai_whisper-20250625.tar.gz`),
which is not a dependency (it pulls numba and triton); each is copied with the file it is in.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)

from app.engine.model_import import locate_bundled

__all__ = [
    "D_MODEL",
    "FAMILIES",
    "HEADS",
    "LANGUAGES",
    "MEL_FILTERS",
    "Family",
    "build_checkpoint",
    "openai_special_ids",
]

D_MODEL = 64
HEADS = 4
_FFN = 4 * D_MODEL
_TIMESTAMPS = 1501
"""`<|0.00|>` ... `<|30.00|>`"""

MEL_FILTERS = Path(__file__).parents[1] / "data" / "openai_whisper" / "mel_filters.npz"
"""openai-whisper's `whisper/assets/mel_filters.npz` (see the README beside it)."""

# openai-whisper 20250625, whisper/tokenizer.py: the keys of `LANGUAGES`, in order.
LANGUAGES = (
    *("en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv"),
    *("it", "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no"),
    *("th", "ur", "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr"),
    *("az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw"),
    *("gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu"),
    *("am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl"),
    *("mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue"),
)

# openai-whisper 20250625, whisper/assets/gpt2.tiktoken and multilingual.tiktoken: their line
# counts, the BPE ranks the special tokens are numbered after (`get_encoding`).
_RANKS_ENGLISH = 50256
_RANKS_MULTILINGUAL = 50257

# openai-whisper 20250625, whisper/__init__.py: `_ALIGNMENT_HEADS` (a gzipped, base85 boolean
# [decoder layers, decoder heads] mask).
_ALIGNMENT_HEADS = {
    "tiny.en": b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00",
    "large-v2": b"ABzY8zd+h!0{>%R7=D0pU<_bnWW*tkYAhobTNnu$jnkEkXqp)j;w1Tzk)UH3X%SZd&fFZ2fC2yj",
    "large-v3": b"ABzY8gWO1E0{>%R7(9S+Kn!D~%ngiGaR?*L!iJG9p-nab0JQ=-{D1-g00",
    "large-v3-turbo": b"ABzY8j^C+e0{>%RARaKHP%t(lGR*)0g!tONPyhe`",
}


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    n_mels: int
    vocab_size: int
    layers: tuple[int, int]
    """The real (encoder, decoder) layer counts (the hub's `config.json` of the model)."""
    decoder_heads: int
    """The real decoder's heads (the alignment heads are numbered in them)."""
    scaled_layers: tuple[int, int]
    """The random checkpoint's (encoder, decoder) layers: the real ratio, fewer of them."""

    @property
    def multilingual(self) -> bool:
        return self.vocab_size >= 51865  # openai-whisper: `ModelDimensions.is_multilingual`

    @property
    def languages(self) -> tuple[str, ...]:
        """openai-whisper's `num_languages`: `n_vocab - 51765 - int(is_multilingual)`."""
        return LANGUAGES[: self.vocab_size - 51765 - int(self.multilingual)]

    def real_alignment_heads(self) -> list[tuple[int, int]] | None:
        """openai-whisper's alignment heads of the real model (None: it has none for it)."""
        dump = _ALIGNMENT_HEADS.get(self.name)
        if dump is None:
            return None
        mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)
        layers = self.layers[1]
        if mask.size != layers * self.decoder_heads:
            raise ValueError(f"{self.name}: {mask.size} alignment flags for {layers} layers")
        return [(int(layer), int(head)) for layer, head in np.argwhere(mask.reshape(layers, -1))]

    def alignment_heads(self) -> list[list[int]]:
        """The real heads mapped onto the scaled decoder (layer and head in proportion); without
        real ones, every head of the last half of the layers (transformers' and CTranslate2's
        default)."""
        decoder_layers = self.scaled_layers[1]
        real = self.real_alignment_heads()
        if real is None:
            last_half = range(decoder_layers // 2, decoder_layers)
            return [[layer, head] for layer in last_half for head in range(HEADS)]
        real_layers = self.layers[1]
        scaled = {
            (layer * decoder_layers // real_layers, head * HEADS // self.decoder_heads)
            for layer, head in real
        }
        return [list(head) for head in sorted(scaled)]


FAMILIES = (
    Family("tiny.en", 80, 51864, layers=(4, 4), decoder_heads=6, scaled_layers=(4, 4)),
    Family("large-v2", 80, 51865, layers=(32, 32), decoder_heads=20, scaled_layers=(8, 8)),
    Family("large-v3", 128, 51866, layers=(32, 32), decoder_heads=20, scaled_layers=(8, 8)),
    Family("large-v3-turbo", 128, 51866, layers=(32, 4), decoder_heads=20, scaled_layers=(8, 1)),
    Family("distil-large-v3", 128, 51866, layers=(32, 2), decoder_heads=20, scaled_layers=(16, 1)),
)


def openai_special_ids(family: Family) -> dict[str, int]:
    """The special tokens numbered as openai-whisper's `get_encoding` numbers them (its names:
    `<|nospeech|>` is the English tokenizers' `<|nocaptions|>`)."""
    ranks = _RANKS_MULTILINGUAL if family.multilingual else _RANKS_ENGLISH
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in family.languages],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(_TIMESTAMPS)],
    ]
    return {token: ranks + index for index, token in enumerate(specials)}


# --------------------------------------------------------------------------- tokenizer


def _bundled_source(family: Family) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundled model's CTranslate2 (tokenizer.json, config.json) the family derives from."""
    ct2_dir, _ = locate_bundled("base" if family.multilingual else "tiny.en")
    tokenizer = json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    return tokenizer, config


def _added_ids(tokenizer: dict[str, Any]) -> dict[str, int]:
    return {token["content"]: int(token["id"]) for token in tokenizer["added_tokens"]}


def _insert_after(tokenizer: dict[str, Any], content: str, after: str) -> None:
    """Inserts the added token `content` right after `after`; every later id moves up by one
    (in the post-processor's template too)."""
    new_id = _added_ids(tokenizer)[after] + 1
    for token in tokenizer["added_tokens"]:
        if token["id"] >= new_id:
            token["id"] += 1
    for special in tokenizer["post_processor"]["special_tokens"].values():
        special["ids"] = [i + 1 if i >= new_id else i for i in special["ids"]]
    template = next(t for t in tokenizer["added_tokens"] if t["content"] == after)
    tokenizer["added_tokens"].append({**template, "id": new_id, "content": content})
    tokenizer["added_tokens"].sort(key=lambda token: token["id"])


def _append_timestamps(tokenizer: dict[str, Any], vocab_size: int) -> None:
    first = max(_added_ids(tokenizer).values()) + 1
    template = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": True}
    for index in range(vocab_size - first):
        content = f"<|{index * 0.02:.2f}|>"
        tokenizer["added_tokens"].append(
            {**template, "id": first + index, "content": content, "special": False}
        )


def _family_tokenizer(family: Family) -> tuple[dict[str, Any], dict[str, Any]]:
    """The family's tokenizer.json, and the bundled CTranslate2 config it derives from."""
    tokenizer, config = _bundled_source(family)
    if len(family.languages) == len(LANGUAGES):  # v3: Cantonese joins, after base's last
        _insert_after(tokenizer, f"<|{LANGUAGES[-1]}|>", after=f"<|{LANGUAGES[-2]}|>")
    _append_timestamps(tokenizer, family.vocab_size)
    return tokenizer, config


def _renumbered(ids: list[int], source: dict[str, Any], derived: dict[str, Any]) -> list[int]:
    """The bundled config's token ids, special tokens renumbered by name into `derived`."""
    names = {token_id: content for content, token_id in _added_ids(source).items()}
    new_ids = _added_ids(derived)
    return [new_ids[names[i]] if i in names else i for i in ids]


# --------------------------------------------------------------------------- checkpoint


def _model_config(
    family: Family, tokenizer: WhisperTokenizerFast, suppress: list[int], begin: list[int]
) -> WhisperConfig:
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    encoder_layers, decoder_layers = family.scaled_layers
    return WhisperConfig(
        vocab_size=family.vocab_size,
        num_mel_bins=family.n_mels,
        d_model=D_MODEL,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=_FFN,
        decoder_ffn_dim=_FFN,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        suppress_tokens=suppress,
        begin_suppress_tokens=begin,
    )


def _generation_config(
    family: Family, tokenizer: WhisperTokenizerFast, suppress: list[int], begin: list[int]
) -> GenerationConfig:
    def token_id(content: str) -> int:
        found = tokenizer.convert_tokens_to_ids(content)
        assert isinstance(found, int)
        return found

    eot = token_id("<|endoftext|>")
    fields: dict[str, Any] = {
        "alignment_heads": family.alignment_heads(),
        "begin_suppress_tokens": begin,
        "suppress_tokens": suppress,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": token_id("<|startoftranscript|>"),
        "is_multilingual": family.multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": 448,
        "no_timestamps_token_id": token_id("<|notimestamps|>"),
        "prev_sot_token_id": token_id("<|startofprev|>"),
        "return_timestamps": False,
    }
    if family.multilingual:
        fields["lang_to_id"] = {f"<|{c}|>": token_id(f"<|{c}|>") for c in family.languages}
        fields["task_to_id"] = {t: token_id(f"<|{t}|>") for t in ("transcribe", "translate")}
    return GenerationConfig.from_dict(fields)


def build_checkpoint(family: Family, out_dir: Path, *, seed: int = 0) -> Path:
    """Writes `family`'s random-weight checkpoint (weights seeded by `seed`) into `out_dir`."""
    out_dir.mkdir(parents=True)
    tokenizer_json, ct2_config = _family_tokenizer(family)
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(out_dir / "tokenizer.json"),
        bos_token=eot,
        eos_token=eot,
        unk_token=eot,
        pad_token=eot,
    )
    tokenizer.save_pretrained(out_dir)
    source, _ = _bundled_source(family)
    suppress = _renumbered(ct2_config["suppress_ids"], source, tokenizer_json)
    begin = _renumbered(ct2_config["suppress_ids_begin"], source, tokenizer_json)

    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(_model_config(family, tokenizer, suppress, begin))
    model.generation_config = _generation_config(family, tokenizer, suppress, begin)
    model.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=family.n_mels).save_pretrained(out_dir)
    return out_dir
