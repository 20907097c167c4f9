"""Adapters in PEFT's form over HTTP: an export imports back to the same stored bytes, zips from
elsewhere are stamped with the served model or refused with the reason, and transformers + peft
transcribe with an exported adapter as the service does (fp32, the same 30 s window)."""

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor
from transformers import (
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)

from app.config import MIB, Settings
from app.engine.adaptation.lora.file import AdapterWeights, load_adapter
from app.engine.adaptation.lora.peft_zip import CONFIG_NAME, WEIGHTS_NAME
from app.engine.features import HOP_LENGTH, log_mel, pad_or_trim
from app.engine.text import wer
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
from app.state import ServiceState
from tests.conftest import bearer, create_user, make_settings
from tests.support.adapters import install_adapter, random_adapter
from tests.support.api import assert_openai_error
from tests.support.audio import speech_16k

CLIPS = [
    ("The quick brown fox jumps over the lazy dog.", "en-us", 130),
    ("Please call me back tomorrow morning.", "en-gb", 140),
    ("We should meet at the station at seven.", "en-us", 150),
    ("She sells sea shells by the sea shore.", "en-gb", 120),
    ("The meeting has been moved to Thursday afternoon.", "en-us", 140),
    ("Turn left at the second traffic light.", "en-gb", 150),
    ("My phone number ends in four five six.", "en-us", 120),
    ("It is going to rain later this evening.", "en-gb", 130),
    ("Could you send me the report by Friday?", "en-us", 160),
    ("The children played football in the park.", "en-gb", 140),
]
GREEDY = TranscriptionOptions(language="en", with_timestamps=False)
"""What transformers' `generate` does for tiny.en by default: greedy, no timestamps."""


@pytest.fixture
def settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False},
        max_adapter_bytes=MIB,
    )


@pytest.fixture(scope="module")
def weights(nf4_engine: WhisperEngine) -> AdapterWeights:
    """Strong enough to change some words of these clips, mild enough to keep them readable."""
    return random_adapter(nf4_engine, 21, strength=0.002)


def adapters_path(user_id: str) -> str:
    return f"/v1/users/{user_id}/adapters"


def weights_path(user_id: str, adapter_id: str) -> str:
    return f"{adapters_path(user_id)}/{adapter_id}/weights"


async def upload(
    client: httpx.AsyncClient, user_id: str, data: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await client.post(
        adapters_path(user_id),
        files={"file": ("adapter.zip", data, "application/zip")},
        headers=headers,
    )


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rezipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


async def test_a_peft_export_imports_back_to_the_same_stored_bytes(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights
) -> None:
    alice, bob = await create_user(client, "alice"), await create_user(client, "bob")
    as_alice, as_bob = bearer(alice["api_key"]), bearer(bob["api_key"])
    source = await install_adapter(state, alice["id"], weights)
    stored = await client.get(weights_path(alice["id"], source), headers=as_alice)

    exported = await client.get(
        weights_path(alice["id"], source), params={"format": "peft"}, headers=as_alice
    )

    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"] == "application/zip"
    assert exported.headers["content-disposition"] == f'attachment; filename="{source}.peft.zip"'
    assert exported.headers["etag"] == f'"{hashlib.sha256(exported.content).hexdigest()}"'
    files = zip_members(exported.content)
    assert sorted(files) == [CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads(files[CONFIG_NAME])
    assert config["base_model_name_or_path"] == state.engine.info.model_id
    assert (config["r"], config["lora_alpha"]) == (weights.rank, weights.alpha)

    imported = await upload(client, bob["id"], exported.content, as_bob)
    assert imported.status_code == 201, imported.text
    body = imported.json()
    assert (body["active"], body["base_fingerprint"]) == (True, weights.base_fingerprint)
    again = await client.get(weights_path(bob["id"], body["id"]), headers=as_bob)
    assert again.content == stored.content
    assert body["sha256"] == hashlib.sha256(stored.content).hexdigest()


async def test_a_peft_zip_from_elsewhere_is_stamped_with_the_served_model(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights
) -> None:
    """PEFT's own files carry no fingerprint: the served model's is recorded, once the modules
    and shapes fit it."""
    carol = await create_user(client, "carol")
    as_carol = bearer(carol["api_key"])
    source = await install_adapter(state, carol["id"], weights)
    exported = await client.get(
        weights_path(carol["id"], source), params={"format": "peft"}, headers=as_carol
    )
    files = zip_members(exported.content)
    tensors = load_safetensors(files[WEIGHTS_NAME])
    foreign = {**files, WEIGHTS_NAME: save_safetensors(tensors, metadata={"format": "pt"})}

    imported = await upload(client, carol["id"], rezipped(foreign), as_carol)

    assert imported.status_code == 201, imported.text
    assert imported.json()["base_fingerprint"] == state.engine.info.fingerprint
    stored = await client.get(weights_path(carol["id"], imported.json()["id"]), headers=as_carol)
    assert load_adapter(stored.content).encoder_window == "full"


async def test_unservable_or_hostile_peft_zips_are_refused_with_the_reason(
    client: httpx.AsyncClient, state: ServiceState, weights: AdapterWeights
) -> None:
    dave = await create_user(client, "dave")
    as_dave = bearer(dave["api_key"])
    source = await install_adapter(state, dave["id"], weights)
    exported = await client.get(
        weights_path(dave["id"], source), params={"format": "peft"}, headers=as_dave
    )
    files = zip_members(exported.content)
    config = json.loads(files[CONFIG_NAME])
    rslora = {**files, CONFIG_NAME: json.dumps({**config, "use_rslora": True}).encode()}
    too_strong = {**files, CONFIG_NAME: json.dumps({**config, "lora_alpha": 1000}).encode()}
    pickled = {CONFIG_NAME: files[CONFIG_NAME], "adapter_model.bin": b"\x80\x04K\x01."}
    wrong_shape = {
        **files,
        WEIGHTS_NAME: save_safetensors(
            {
                name: tensor[:, :3].contiguous() if "lora_A" in name else tensor
                for name, tensor in load_safetensors(files[WEIGHTS_NAME]).items()
            }
        ),
    }

    for archive, message in [
        (rezipped(rslora), "rank-stabilised LoRA"),
        (rezipped(too_strong), "at most 64 is allowed"),  # the bounds every adapter meets
        (rezipped(pickled), "a pickle, which is never loaded"),
        (rezipped(wrong_shape), "has shape"),
        (b"PK\x03\x04" + b"\0" * 64, "not a valid zip archive"),
    ]:
        refused = await upload(client, dave["id"], archive, as_dave)
        error = assert_openai_error(refused, 400)
        assert (error["code"], error["param"]) == ("invalid_adapter", "file")
        assert message in str(error["message"])
    assert len((await client.get(adapters_path(dave["id"]), headers=as_dave)).json()["data"]) == 1

    unknown = await client.get(
        weights_path(dave["id"], source), params={"format": "onnx"}, headers=as_dave
    )
    assert unknown.status_code == 422


async def test_the_schema_declares_both_forms(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    export = schema["paths"]["/v1/users/{user_id}/adapters/{adapter_id}/weights"]["get"]
    assert set(export["responses"]["200"]["content"]) == {
        "application/octet-stream",
        "application/zip",
    }
    (form,) = [p for p in export["parameters"] if p["name"] == "format"]
    assert (form["in"], form["schema"]["enum"], form["schema"]["default"]) == (
        "query",
        ["pqm", "peft"],
        "pqm",
    )


@pytest.fixture(scope="module")
def fp32_engine(tiny_en_dir: Path) -> WhisperEngine:
    return WhisperEngine.load(tiny_en_dir, precision="fp32", device="cpu", threads=2)


def service_window(extractor: Any, clip: np.ndarray) -> Tensor:
    """[n_mels, 3000]: the window the service encodes for a clip under 30 s (a full window):
    the clip's frames, then zeros, as openai-whisper and faster-whisper pad a window."""
    mel = log_mel(extractor, clip, torch.device("cpu"))
    return pad_or_trim(mel[:, : len(clip) // HOP_LENGTH])


def generated(model: Any, tiny_en_dir: Path, features: Tensor) -> list[str]:
    """transformers' `generate` as it runs for tiny.en by default: greedy, no timestamps."""
    tokenizer = WhisperTokenizerFast.from_pretrained(tiny_en_dir)
    with torch.inference_mode():
        tokens = model.generate(input_features=features, num_beams=1, do_sample=False)
    return [text.strip() for text in tokenizer.batch_decode(tokens, skip_special_tokens=True)]


@pytest.mark.slow
async def test_transformers_and_peft_transcribe_an_export_as_the_service_does(
    client: httpx.AsyncClient,
    state: ServiceState,
    weights: AdapterWeights,
    fp32_engine: WhisperEngine,
    tiny_en_dir: Path,
    tmp_path: Path,
) -> None:
    """On the same windows, transformers + peft and the service (both fp32) agree. transformers'
    own feature extractor pads a clip with the log-mel of silence instead of zeros: that moves
    the base model's transcripts as much as the adapter's (printed, not asserted)."""
    erin = await create_user(client, "erin")
    as_erin = bearer(erin["api_key"])
    source = await install_adapter(state, erin["id"], weights)
    stored = await client.get(weights_path(erin["id"], source), headers=as_erin)
    exported = await client.get(
        weights_path(erin["id"], source), params={"format": "peft"}, headers=as_erin
    )
    for name, data in zip_members(exported.content).items():
        (tmp_path / name).write_bytes(data)
    served = load_adapter(stored.content)
    assert served.encoder_window == "full"  # 30 s, the only window transformers encodes
    clips = [speech_16k(text, voice=voice, speed=speed) for text, voice, speed in CLIPS]
    refs = [text for text, _, _ in CLIPS]
    extractor = WhisperFeatureExtractor.from_pretrained(tiny_en_dir)
    windows = torch.stack([service_window(extractor, clip) for clip in clips])
    padded_with_silence = extractor(clips, sampling_rate=16_000, return_tensors="pt").input_features

    service = [fp32_engine.transcribe(clip, GREEDY, served).text.strip() for clip in clips]
    service_base = [fp32_engine.transcribe(clip, GREEDY).text.strip() for clip in clips]
    base = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, tmp_path).eval()
    through_peft = generated(peft_model, tiny_en_dir, windows)
    own_features = generated(peft_model, tiny_en_dir, padded_with_silence)
    with peft_model.disable_adapter():
        own_features_base = generated(peft_model, tiny_en_dir, padded_with_silence)

    between = wer(service, through_peft)
    print(
        f"\nWER on {len(CLIPS)} clips, fp32, against the text: service with the adapter "
        f"{wer(refs, service):.3f}, transformers + peft {wer(refs, through_peft):.3f} (same "
        f"windows), {wer(refs, own_features):.3f} (transformers' padding). Between service and "
        f"transformers + peft: {between:.3f} (same windows), {wer(service, own_features):.3f} "
        f"(transformers' padding; base model alone {wer(service_base, own_features_base):.3f}). "
        f"The adapter moves the service's transcripts by {wer(service_base, service):.3f}."
    )
    assert between <= 0.05
    assert abs(wer(refs, service) - wer(refs, through_peft)) <= 0.05
